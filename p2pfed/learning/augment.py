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
