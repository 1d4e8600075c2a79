"""Data sets: CIFAR-10 (downloaded where online), image folders (or a .tar.xz of one, unpacked
once per machine), and generated data; a peer's partition of the training split.

Images are held as uint8 tensors (N, 3, H, W) with int64 labels; a peer decodes only the images
of its own partition. Knows nothing about the network.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import partition as partitions

log = logging.getLogger("p2pfed.learning.datasets")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(RuntimeError):
    """The data cannot be found or read; the message says what to pass instead."""


@dataclass
class Split:
    """One split of a data set. Either images are loaded, or files are listed to load lazily."""
    labels: np.ndarray               # int64 (N,)
    classes: list[str]
    images: torch.Tensor | None = None   # uint8 (N, 3, H, W), when in memory
    files: list[str] | None = None       # image paths, when not yet decoded

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "Split":
        """The images at indices; files are decoded here, only for these indices."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return Split(self.labels[indices], self.classes, images=self.images[torch.from_numpy(indices)])
        assert self.files is not None
        return Split(self.labels[indices], self.classes, images=decode_images([self.files[i] for i in indices]))

    def loaded(self) -> "Split":
        return self if self.images is not None else self.subset(np.arange(len(self)))


def spread_sample(split: Split, n: int, seed: int) -> Split:
    """A fixed random subset of n images (all of them if there are fewer), in index order, decoded."""
    if n >= len(split):
        return split.loaded()
    return split.subset(partitions.sample_indices(len(split), n, seed))


def synthetic(n: int, seed: int, num_classes: int = 10, size: int = 32, noise: float = 0.35,
              split_seed: int = 0) -> Split:
    """A learnable set: each class is a fixed smooth colour pattern; images vary contrast and add noise.

    The class templates depend only on `seed`; `split_seed` draws different images (train/test).
    """
    g = torch.Generator().manual_seed(seed)
    low = (torch.rand(num_classes, 3, 2, 2, generator=g) > 0.5).float()
    templates = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    g2 = torch.Generator().manual_seed(seed * 1000 + split_seed + 1)
    labels = torch.randint(0, num_classes, (n,), generator=g2)
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g2)
    x = 0.5 + (templates[labels] - 0.5) * contrast + noise * torch.randn((n, 3, size, size), generator=g2)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return Split(labels.numpy().astype(np.int64), [f"class{c}" for c in range(num_classes)], images=images)


def decode_images(files: list[str]) -> torch.Tensor:
    from PIL import Image
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise DataError(f"cannot read image {f}: {e}; remove or replace the file") from None
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    sizes = {tuple(t.shape) for t in out}
    if len(sizes) > 1:
        raise DataError(f"images have different sizes {sorted(sizes)[:3]}...; resize them to one size first")
    return torch.stack(out) if out else torch.zeros(0, 3, 32, 32, dtype=torch.uint8)


def _cache_root(cache_dir: str) -> Path:
    return Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "p2pfed"


def unpack_archive(archive: Path, cache_dir: str = "") -> Path:
    """Unpack a .tar.xz/.tar.gz once per machine into the cache (keyed by path, size and mtime);
    return the root dir. Safe when several processes ask at once: one unpacks under an exclusive
    lock while the others wait for it, and the tree appears by an atomic rename, so a crash never
    leaves half of one."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = _cache_root(cache_dir) / f"{archive.name.split('.')[0]}-{key}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # released when the file closes, also if we crash
        if dest.is_dir():                          # another process unpacked it while we waited
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        log.info("unpacking %s into %s (once per machine)", archive, dest)
        started = time.monotonic()
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.rename(tmp, dest)
        log.info("unpacked %s in %.1f s", archive.name, time.monotonic() - started)
    return dest


def _find_split_root(root: Path, split: str) -> Path:
    """root/<split>, or root/<single dir>/<split> (an archive's top folder)."""
    if (root / split).is_dir():
        return root / split
    subdirs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    if len(subdirs) == 1 and (subdirs[0] / split).is_dir():
        return subdirs[0] / split
    raise DataError(f"no {split}/ folder under {root}; an image folder needs {root}/{split}/<class>/<image> "
                    f"(or pass a .tar.xz of that layout)")


def image_folder(data_dir: str, split: str, cache_dir: str = "") -> Split:
    """List `<root>/<split>/<class>/*` (labels = sorted class folder index). Decoding is lazy."""
    path = Path(data_dir)
    if not path.exists():
        raise DataError(f"data.data_dir {path} does not exist; pass --data-dir with an image folder "
                        f"or a .tar.xz of one (e.g. ../shared/data/cifar10-dev.tar.xz)")
    if path.is_file():
        path = unpack_archive(path, cache_dir)
    root = _find_split_root(path, split)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{root} has no class folders; expected {root}/<class>/<image>")
    files, labels = [], []
    for c, name in enumerate(classes):
        names = sorted(f for f in os.listdir(root / name) if f.lower().endswith(IMAGE_EXTENSIONS))
        files += [str(root / name / f) for f in names]
        labels += [c] * len(names)
    return Split(np.asarray(labels, dtype=np.int64), classes, files=files)


def cifar10(data_dir: str, split: str) -> Split:
    """torchvision CIFAR-10, downloaded into data_dir where online."""
    import torchvision
    try:
        ds = torchvision.datasets.CIFAR10(data_dir, train=(split == "train"), download=True)
    except Exception as e:  # URLError, socket errors, ...: offline and not cached
        raise DataError(f"CIFAR-10 is not in {data_dir} and could not be downloaded ({type(e).__name__}: "
                        f"{str(e)[:120]}); on an offline machine pass --dataset folder --data-dir <image folder "
                        f"or .tar.xz>, or --dataset synthetic") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(np.asarray(ds.targets, dtype=np.int64), list(ds.classes), images=images)


def load_split(cfg, split: str) -> Split:
    """The train or test split named by a DataConfig (lazy for image folders)."""
    if cfg.dataset == "synthetic":
        n = cfg.synthetic_train if split == "train" else cfg.synthetic_test
        s = synthetic(n, cfg.seed, split_seed=0 if split == "train" else 1)
    elif cfg.dataset == "folder":
        s = image_folder(cfg.data_dir, split, cfg.cache_dir)
    elif cfg.dataset == "cifar10":
        s = cifar10(cfg.data_dir, split)
    else:
        raise DataError(f"unknown data.dataset {cfg.dataset!r}; use cifar10, folder or synthetic")
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    if limit and limit < len(s):
        # a deterministic, class-balanced-in-expectation subset; files stay undecoded
        keep = partitions.sample_indices(len(s), limit, cfg.seed + 7)
        s = Split(s.labels[keep], s.classes, images=None if s.images is None else s.images[torch.from_numpy(keep)],
                  files=None if s.files is None else [s.files[i] for i in keep])
    return s


def peer_partition(cfg, peer_index: int, n_peers: int) -> tuple[Split, np.ndarray, int]:
    """This peer's training images (decoded), their indices in the full training split, and
    the size of the full training split."""
    full = load_split(cfg, "train")
    parts = partitions.partition(full.labels, n_peers, cfg.partition, cfg.alpha, cfg.seed, cfg.shards_per_peer)
    idx = parts[peer_index]
    return full.subset(idx), idx, len(full)
