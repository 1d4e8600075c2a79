"""Data sets: CIFAR-10 (downloaded where online), image folders (or a .tar.xz of one, unpacked
once per machine), and generated data; a peer's partition of the training split.

Images are held as uint8 tensors (N, 3, H, W) with int64 labels; a peer decodes only the images
of its own partition. Knows nothing about the network.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import folders
from . import partition as partitions
from .folders import IMAGE_EXTENSIONS, DataError, unpack_archive  # noqa: F401  (the data API in one place)


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


def image_folder(data_dir: str, split: str, cache_dir: str = "") -> Split:
    """List `<root>/<split>/<class>/*` (labels = sorted class folder index). Decoding is lazy."""
    files, labels, classes = folders.list_split(data_dir, split, cache_dir)
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
