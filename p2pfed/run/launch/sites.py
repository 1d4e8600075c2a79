"""Sites that bring their own data: the launcher's side of data.partition = "own" (one folder per
local peer, the class list and the size of an epoch agreed before any peer starts), and
`p2pfed sites`, which writes N demo site folders from one data set with a chosen partition, to
rehearse a deployment before the real sites exist. No torch: launch.py runs this first.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ... import config as config_mod
from ...config import ConfigError
from ...learning import folders
from ...learning import partition as partitions


def own_folders(cfg, dirs: list[str], partition: str | None):
    """The config of a one-machine run whose peers each train on their own folder: peer k gets
    dirs[k] (one folder, or none: data.data_dir, for every peer), data.classes is the
    union of the sites' class folders (or the config's list, which every folder must fit), and
    data.site_images their mean number of training images."""
    if partition not in (None, "own"):
        raise ConfigError(f"--partition {partition} cuts one shared data set, but {len(dirs)} --data-dir folders "
                          f"were given, one per peer; drop --partition (each peer trains on all of its folder)")
    ids = cfg.peer_ids
    if len(dirs) > 1 and len(dirs) != len(ids):
        raise ConfigError(f"{len(dirs)} --data-dir folders for {len(ids)} peers; pass one --data-dir per peer "
                          f"(--peers {len(dirs)}), or one for all")
    paths = dirs if len(dirs) > 1 else [dirs[0] if dirs else cfg.data.data_dir] * len(ids)
    names: dict[str, list[str]] = {}
    counts = []
    for pid, path in zip(ids, paths):
        if not Path(path).exists():
            raise ConfigError(f"--data-dir {path} (peer {pid}) does not exist; pass the site's image folder "
                              f"(train/<class>/*, optionally test/<class>/*)")
        try:
            _, found = folders.class_folders(path, "train", cfg.data.cache_dir)
            if cfg.data.classes:
                folders.class_index(found, cfg.data.classes, f"--data-dir {path} (peer {pid})")
            files, _, _ = folders.list_split(path, "train", cfg.data.cache_dir, cfg.data.classes or found)
        except folders.DataError as e:
            raise ConfigError(f"peer {pid}: {e}") from None
        names[path] = found
        counts.append(len(files))
    classes = tuple(cfg.data.classes) or tuple(sorted({c for found in names.values() for c in found}))
    cfg = config_mod.override(cfg, data={"dataset": "folder", "partition": "own", "classes": list(classes),
                                         "site_images": max(1, round(sum(counts) / len(counts)))},
                              model={"num_classes": len(classes)})
    peers = sorted(cfg.peers, key=lambda p: p.id)
    return config_mod.replace_peers(cfg, tuple(dataclasses.replace(p, data_dir=str(path))
                                               for p, path in zip(peers, paths)))


def _place(src: str, dst: Path) -> None:
    """A hard link where the file system allows it (no copy of the photos), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_sites(data_dir: str, out: str, n_sites: int, partition: str = "dirichlet", alpha: float = 0.5,
               seed: int = 0, shards_per_site: int = 2, cache_dir: str = "") -> dict:
    """Write out/site<k>/{train,test}/<class>/<image> for k < n_sites from one image folder (or
    archive). The training images are split by `partition`; each site's test images follow the
    class mix of its training images (per class, the test images are dealt out in proportion to
    the sites' training counts), so a site is evaluated on data like its own. Returns the
    manifest that is also written as out/sites.json (per site and class: image counts)."""
    outdir = Path(out)
    if outdir.exists() and any(outdir.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; pass a new folder")
    files, labels, classes = folders.list_split(data_dir, "train", cache_dir)
    labels = np.asarray(labels, dtype=np.int64)
    try:
        parts = partitions.partition(labels, n_sites, partition, alpha, seed, shards_per_site)
    except ValueError as e:
        raise ConfigError(f"cannot cut {len(files)} images into {n_sites} sites: {e}") from None
    train_counts = np.array(partitions.histogram(labels, parts, len(classes)))        # sites x classes
    try:
        tfiles, tlabels, _ = folders.list_split(data_dir, "test", cache_dir, classes)
    except folders.MissingSplit:
        tfiles, tlabels = [], []
    tlabels = np.asarray(tlabels, dtype=np.int64)
    rng = np.random.default_rng(seed + 1)
    test_parts: list[list[int]] = [[] for _ in range(n_sites)]
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(tlabels == c))
        share = train_counts[:, c] / max(1, train_counts[:, c].sum())
        cuts = np.floor(np.cumsum(share) * len(idx) + 0.5).astype(int)[:-1]
        for k, chunk in enumerate(np.split(idx, cuts)):
            test_parts[k].extend(chunk.tolist())
    tmp = outdir.with_name(outdir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"source": str(data_dir), "partition": partition, "alpha": alpha, "seed": seed,
                "classes": list(classes), "sites": []}
    try:
        for k in range(n_sites):
            for split, fl, lb, idx in (("train", files, labels, parts[k]), ("test", tfiles, tlabels, test_parts[k])):
                for i in idx:
                    _place(fl[i], tmp / f"site{k}" / split / classes[lb[i]] / Path(fl[i]).name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write the sites under {outdir}: {e}; check the free space and permissions") from None
    for k in range(n_sites):
        manifest["sites"].append({
            "folder": f"site{k}",
            "train": {c: int(n) for c, n in zip(classes, train_counts[k]) if n},
            "test": {c: int(n) for c, n in zip(classes, np.bincount(tlabels[test_parts[k]], minlength=len(classes)))
                     if n}})
    (tmp / "sites.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if outdir.exists():
        outdir.rmdir()
    os.rename(tmp, outdir)
    return manifest
