"""Data sets: CIFAR-10 (downloaded where online), image folders (or a .tar.xz of one, unpacked
once per machine), and generated data; a peer's partition of the training split, or its own
folder (data.partition = "own").

Small images of one size (CIFAR) are held in memory as uint8 tensors (N, 3, H, W) with int64
labels; a peer decodes only the images of its own partition. Photos of any size are listed and
streamed instead (photos.py): decoded while training, resized at model.input_size. Labels index
the agreed class names (data.classes), never a local sort order. An unreadable image is skipped
and named (Split.bad). Knows nothing about the network.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from . import fetch, folders, photos
from . import partition as partitions
from .folders import IMAGE_EXTENSIONS, DataError, unpack_archive  # noqa: F401  (the data API in one place)

log = logging.getLogger("p2pfed.learning.datasets")


@dataclass
class Split:
    """One split of a data set. Either images are loaded, or files are listed to load lazily."""
    labels: np.ndarray               # int64 (N,)
    classes: list[str]
    images: torch.Tensor | None = None   # uint8 (N, 3, H, W), when in memory
    files: list[str] | None = None       # image paths, when not yet decoded
    size: int = 0                        # model.input_size: photos of mixed sizes are decoded at it
    stream: bool = False                 # photos: decoded while training (photos.PhotoStream), never all at once
    bad: dict[str, str] = field(default_factory=dict)   # unreadable files that were skipped -> why

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "Split":
        """The images at indices; files are decoded here, only for these indices (photos by the
        evaluation rule at `size`). Unreadable files are left out and named in `bad`."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return Split(self.labels[indices], self.classes, images=self.images[torch.from_numpy(indices)],
                         size=self.size, bad=dict(self.bad))
        assert self.files is not None
        files = [self.files[i] for i in indices]
        if self.stream:
            decoder = photos.Decoder(2)
            try:
                images, kept = decoder.decode(files, self.size)
            finally:
                decoder.close()
            bad = decoder.bad
        else:
            images, kept, bad = decode_images(files, self.size)
        return Split(self.labels[indices][kept], self.classes, images=images, size=self.size,
                     bad={**self.bad, **bad})

    def loaded(self) -> "Split":
        return self if self.images is not None else self.subset(np.arange(len(self)))


def _spread(n_items: int, n: int, seed: int) -> np.ndarray:
    """The indices of a spread sample: n of n_items at random (all of them if there are fewer)."""
    return np.arange(n_items) if n >= n_items else partitions.sample_indices(n_items, n, seed)


def spread_sample(split: Split, n: int, seed: int) -> Split:
    """A fixed random subset of n images (all of them if there are fewer), in index order, decoded."""
    if n >= len(split):
        return split.loaded()
    return split.subset(_spread(len(split), n, seed))


def spread_sample_files(split: Split, n: int, seed: int) -> list[str]:
    """The files of spread_sample's images, undecoded (a streamed split)."""
    return [split.files[i] for i in _spread(len(split), n, seed)]


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


def decode_images(files: list[str], size: int = 0) -> tuple[torch.Tensor, list[int], dict[str, str]]:
    """Decode every file in full: (uint8 images, positions of the readable files, unreadable file ->
    why). Images of one size stay as they are; mixed sizes are brought to `size` by the evaluation
    rule (photos.RESIZE_RULE)."""
    out, kept, bad = [], [], {}
    mixed = False
    for i, f in enumerate(files):
        try:
            if mixed:
                out.append(photos.eval_image(f, size))
            else:
                arr = np.asarray(photos.open_rgb(f), dtype=np.uint8)
                out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        except photos.BadImage as e:
            bad[f] = e.why
            log.warning("skipped an unreadable image: %s; remove or replace the file", e)
            continue
        kept.append(i)
        if not mixed and out[-1].shape != out[0].shape:       # a second size: all at `size`, from here on too
            if not size:
                raise DataError(f"images have different sizes ({files[kept[0]]}, {f}) and no size to bring them to")
            mixed = True
            out = [photos.eval_image(files[j], size) for j in kept]
    images = torch.stack(out) if out else torch.zeros(0, 3, size or 32, size or 32, dtype=torch.uint8)
    return images, kept, bad


def _small_uniform(files: list[str], size: int, probe: int = 16) -> bool:
    """Whether a spread sample of the files are images of one size, no larger than size x size
    (then they fit in memory as they are: CIFAR-like data, also when the model upscales them);
    photos of mixed or larger sizes are streamed."""
    from PIL import Image
    seen = set()
    for i in sorted({int(j) for j in np.linspace(0, len(files) - 1, min(probe, len(files)))}):
        try:
            with Image.open(files[i]) as im:
                seen.add(im.size)
        except MemoryError:
            raise
        except Exception:       # an unreadable file is skipped later, by name
            continue
    return len(seen) <= 1 and all(w <= size and h <= size for w, h in seen)


def readable(files: list[str], workers: int = 2) -> dict[str, str]:
    """Files whose header cannot be read as an image -> why (a cheap check of a whole folder
    before training, so that a site's image count, its weight, is right from the start)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max(1, workers)) as pool:
        whys = list(pool.map(photos.header_ok, files, chunksize=64))
    return {f: why for f, why in zip(files, whys) if why}


def image_folder(data_dir: str, split: str, cache_dir: str = "", classes: tuple[str, ...] = (),
                 size: int = 0, loader: str = "auto", workers: int = 2, own: bool = False) -> Split:
    """List `<root>/<split>/<class>/*`, labels by class name (folders.list_split). Decoding is
    lazy. Photos (loader "stream", or "auto" with images of mixed sizes or larger than size) are
    streamed; a site's own photos (own) are header-checked now, the unreadable ones left out and
    named in `bad`, so that its image count, its weight, is right from the start. A shared data
    set keeps every listed file until it is decoded: every host must cut the same partition."""
    files, labels, names = folders.list_split(data_dir, split, cache_dir, classes)
    stream = bool(files) and (loader == "stream" or (loader == "auto" and size and not _small_uniform(files, size)))
    bad: dict[str, str] = {}
    if stream and own:
        bad = readable(files, workers)
        for f, why in bad.items():
            log.warning("skipped an unreadable image: %s (%s); remove or replace the file", f, why)
        if bad:
            keep = [i for i, f in enumerate(files) if f not in bad]
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    return Split(np.asarray(labels, dtype=np.int64), names, files=files, size=size, stream=stream, bad=bad)


def cifar10(data_dir: str, split: str) -> Split:
    """torchvision CIFAR-10, fetched into data_dir once where online (fetch.py)."""
    import torchvision
    fetch.cifar10(data_dir)
    try:
        ds = torchvision.datasets.CIFAR10(data_dir, train=(split == "train"), download=False)
    except RuntimeError as e:  # torchvision's checksum: a file of it was changed or cut short
        raise DataError(f"CIFAR-10 in {data_dir}/{fetch.CIFAR10_FOLDER} cannot be read ({e}); delete that "
                        f"folder to fetch it again") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(np.asarray(ds.targets, dtype=np.int64), list(ds.classes), images=images)


def load_split(cfg, split: str, size: int = 0, data_dir: str = "") -> Split:
    """The train or test split named by a DataConfig (lazy for image folders); size: the model's
    input size; data_dir: this peer's own folder (data.partition = "own"), else data.data_dir."""
    if cfg.dataset == "synthetic":
        n = cfg.synthetic_train if split == "train" else cfg.synthetic_test
        s = synthetic(n, cfg.seed, split_seed=0 if split == "train" else 1)
    elif cfg.dataset == "folder":
        s = image_folder(data_dir or cfg.data_dir, split, cfg.cache_dir, tuple(cfg.classes), size, cfg.loader,
                         cfg.workers, own=cfg.partition == "own")
    elif cfg.dataset == "cifar10":
        s = cifar10(cfg.data_dir, split)
    else:
        raise DataError(f"unknown data.dataset {cfg.dataset!r}; use cifar10, folder or synthetic")
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    if limit and limit < len(s):
        # a deterministic, class-balanced-in-expectation subset; files stay undecoded
        keep = partitions.sample_indices(len(s), limit, cfg.seed + 7)
        s = Split(s.labels[keep], s.classes, images=None if s.images is None else s.images[torch.from_numpy(keep)],
                  files=None if s.files is None else [s.files[i] for i in keep], size=s.size, stream=s.stream,
                  bad=s.bad)
    if cfg.classes and s.classes != list(cfg.classes):
        raise DataError(f"data.classes {list(cfg.classes)} does not match the classes of data.dataset = "
                        f"{cfg.dataset!r} ({s.classes}); leave data.classes empty for it")
    return s


def peer_partition(cfg, peer_index: int, n_peers: int, size: int = 0,
                   data_dir: str = "") -> tuple[Split, np.ndarray, int]:
    """This peer's training images (decoded, or listed to stream), their indices in the full
    training split, and the size of the full training split. With data.partition = "own" the
    split is all of this peer's own folder (data_dir), and the full size is data.site_images x
    n_peers (the agreed mean per site, which sizes an epoch)."""
    full = load_split(cfg, "train", size, data_dir)
    if cfg.partition == "own":
        idx = np.arange(len(full))
        mine = select(full, idx)
        if not len(mine):
            raise DataError(f"{data_dir or cfg.data_dir} holds no readable training image; a site needs "
                            f"train/<class>/<image>")
        return mine, idx, (cfg.site_images or len(mine)) * n_peers
    parts = partitions.partition(full.labels, n_peers, cfg.partition, cfg.alpha, cfg.seed, cfg.shards_per_peer)
    idx = parts[peer_index]
    return select(full, idx), idx, len(full)


def select(split: Split, idx: np.ndarray) -> Split:
    """The images at idx: listed (still to stream) for photos, decoded otherwise."""
    return _picked(split, idx) if split.stream else split.subset(idx)


def _picked(split: Split, idx: np.ndarray) -> Split:
    """The listed (undecoded) files at idx of a streamed split."""
    return Split(split.labels[idx], split.classes, files=[split.files[i] for i in idx], size=split.size,
                 stream=True, bad=split.bad)
