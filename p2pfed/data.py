"""Data sets, deterministic partitions, normalisation and augmentation.

Images are held as uint8 tensors (N, 3, H, W) with int64 labels; a peer decodes only
the images of its own partition. Partitions are pure functions of (labels, n, seed) so
every peer computes the same split on its own. This module knows nothing about the network.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("p2pfed.data")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
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


# ---------------------------------------------------------------- partitions (pure)

def sample_indices(n_items: int, n: int, seed: int) -> np.ndarray:
    """n of range(n_items), chosen at random with seed, sorted. Image folders and partitions list
    images class by class, so a prefix would hold only one or two classes: never sample a prefix."""
    return np.sort(np.random.default_rng(seed).permutation(n_items)[:n])


def spread_sample(split: "Split", n: int, seed: int) -> "Split":
    """A fixed random subset of n images (all of them if there are fewer), in index order, decoded."""
    if n >= len(split):
        return split.loaded()
    return split.subset(sample_indices(len(split), n, seed))


def partition_iid(n_items: int, n_parts: int, seed: int) -> list[np.ndarray]:
    """Shuffle 0..n_items-1 with seed and cut into n_parts nearly equal, sorted parts."""
    if n_parts < 1 or n_items < n_parts:
        raise ValueError(f"cannot split {n_items} items into {n_parts} parts")
    perm = np.random.default_rng(seed).permutation(n_items)
    return [np.sort(p) for p in np.array_split(perm, n_parts)]


def partition_dirichlet(labels: np.ndarray, n_parts: int, alpha: float, seed: int,
                        min_size: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed split: per class, shares drawn from Dirichlet(alpha) over parts.

    Redraws (deterministically) until every part has at least min_size items.
    """
    labels = np.asarray(labels)
    if len(labels) < n_parts * min_size:
        min_size = max(1, len(labels) // (2 * n_parts))
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(n_parts)]
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            shares = rng.dirichlet(np.full(n_parts, alpha))
            cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"dirichlet alpha={alpha} left a peer with fewer than {min_size} items after "
                     f"{max_tries} draws; use a larger data.alpha or fewer peers")


def partition(labels: np.ndarray, n_parts: int, kind: str, alpha: float, seed: int) -> list[np.ndarray]:
    if kind == "iid":
        return partition_iid(len(labels), n_parts, seed)
    if kind == "dirichlet":
        return partition_dirichlet(labels, n_parts, alpha, seed)
    raise ValueError(f"unknown partition {kind!r}; use iid or dirichlet")


# ---------------------------------------------------------------- data sets

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
    """Unpack a .tar.xz/.tar.gz once into the cache (keyed by its size+mtime); return the root dir.

    Atomic: unpack into a temporary dir, then rename, so a crash never leaves half a tree.
    """
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = _cache_root(cache_dir) / f"{archive.name.split('.')[0]}-{key}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    log.info("unpacking %s into %s (once)", archive, dest)
    started = time.monotonic()
    with tarfile.open(archive) as tar:
        for i, member in enumerate(tar):
            tar.extract(member, tmp, filter="data")
            if i and i % 10000 == 0:
                log.info("unpacking: %d files so far (%.0f s)", i, time.monotonic() - started)
    log.info("unpacked %s in %.1f s", archive.name, time.monotonic() - started)
    try:
        os.rename(tmp, dest)
    except OSError:  # another peer won the race; use its copy
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
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
        keep = sample_indices(len(s), limit, cfg.seed + 7)
        s = Split(s.labels[keep], s.classes, images=None if s.images is None else s.images[torch.from_numpy(keep)],
                  files=None if s.files is None else [s.files[i] for i in keep])
    return s


def peer_partition(cfg, peer_index: int, n_peers: int) -> tuple[Split, np.ndarray, int]:
    """This peer's training images (decoded), their indices in the full training split, and
    the size of the full training split."""
    full = load_split(cfg, "train")
    parts = partition(full.labels, n_peers, cfg.partition, cfg.alpha, cfg.seed)
    idx = parts[peer_index]
    return full.subset(idx), idx, len(full)


# ---------------------------------------------------------------- tensors for the model

def normalize(images_u8: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float normalised with CIFAR statistics, optionally resized."""
    x = images_u8.float().div_(255)
    if size and x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images_u8: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad` pixels of zero padding and random horizontal flip, per image."""
    n, c, h, w = images_u8.shape
    padded = torch.nn.functional.pad(images_u8, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))            # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))            # (n, w)
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def batches(split: Split, batch_size: int, generator: torch.Generator | None, train: bool,
            do_augment: bool, size: int | None):
    """Yield (x, y) float batches; shuffled and augmented when train."""
    assert split.images is not None
    n = len(split)
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    labels = torch.from_numpy(split.labels)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        imgs = split.images[idx]
        if train and do_augment:
            imgs = augment(imgs, generator)
        yield normalize(imgs, size), labels[idx]


def stream(split: Split, batch_size: int, generator: torch.Generator, do_augment: bool, size: int | None):
    """Endless training batches: epoch after epoch, each reshuffled. Rounds of a few steps take
    the next batches of the same epoch, so every image is seen once per epoch."""
    while True:
        yield from batches(split, batch_size, generator, train=True, do_augment=do_augment, size=size)
