"""From uint8 images to training batches: normalisation, augmentation, the endless stream.

Images are uint8 tensors (N, 3, H, W); batches are float tensors normalised with the CIFAR
statistics. Every random choice comes from a torch.Generator seeded per peer (peer_seed), so a
run is reproducible.
"""
from __future__ import annotations

import torch

from .datasets import Split

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def peer_seed(seed: int, peer_id: int) -> int:
    """The seed of one peer's own random streams (batch order, augmentation, samples)."""
    return seed * 1000 + peer_id


def normalize(images_u8: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float normalised with CIFAR statistics, optionally resized (on the
    images' device)."""
    x = images_u8.float().div_(255)
    if size and x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(CIFAR_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images_u8: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad` pixels of zero padding and random horizontal flip, per image, on the
    images' device. The random numbers come from `generator` (on its own device: a CPU generator
    for a CPU run draws exactly what it always drew)."""
    n, c, h, w = images_u8.shape
    dev, gdev = images_u8.device, generator.device
    padded = torch.nn.functional.pad(images_u8, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(dev)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(dev)
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h))            # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w))            # (n, w)
    out = padded[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    flip = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(dev)
    out[flip] = out[flip].flip(-1)
    return out


def batches(split: Split, batch_size: int, generator: torch.Generator | None, train: bool,
            do_augment: bool, size: int | None):
    """Yield (x, y) float batches on the split's device; shuffled and augmented when train."""
    assert split.images is not None
    n = len(split)
    dev = split.images.device
    order = (torch.randperm(n, generator=generator, device=generator.device) if train else torch.arange(n)).to(dev)
    labels = torch.from_numpy(split.labels).to(dev)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        imgs = split.images[idx]
        if train and do_augment:
            imgs = augment(imgs, generator)
        yield normalize(imgs, size), labels[idx]


class Stream:
    """Endless training batches: epoch after epoch, each reshuffled. Rounds of a few steps take
    the next batches of the same epoch, so every image is seen once per epoch. batch_size may
    change between batches (sample-target rounds, balance.py); the last batch of an epoch holds
    what is left of it. With a fixed batch_size this draws exactly what batches() draws."""

    def __init__(self, split: Split, batch_size: int, generator: torch.Generator, do_augment: bool,
                 size: int | None):
        assert split.images is not None
        self.split, self.batch_size, self.generator = split, batch_size, generator
        self.do_augment, self.size = do_augment, size
        self._labels = torch.from_numpy(split.labels).to(split.images.device)
        self._order: torch.Tensor | None = None
        self._pos = 0

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.split)
        if self._order is None or self._pos >= n:
            g = self.generator
            self._order = torch.randperm(n, generator=g, device=g.device).to(self.split.images.device)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += len(idx)
        imgs = self.split.images[idx]
        if self.do_augment:
            imgs = augment(imgs, self.generator)
        return normalize(imgs, self.size), self._labels[idx]


def stream(split: Split, batch_size: int, generator: torch.Generator, do_augment: bool, size: int | None) -> Stream:
    """Endless training batches (Stream)."""
    return Stream(split, batch_size, generator, do_augment, size)


def on_device(split: Split, device: torch.device) -> Split:
    """The split with its images moved to the device once (uint8: 3 KB an image at 32 px)."""
    if device.type == "cpu" or split.images is None:
        return split
    return Split(split.labels, split.classes, images=split.images.to(device))
