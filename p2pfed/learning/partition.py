"""Partitions of a training set over the peers: pure functions of (labels, n, seed), so every
peer computes the same split on its own. No torch, no files.

    iid        shuffle and cut into nearly equal parts
    dirichlet  per class, shares drawn from Dirichlet(alpha) over the parts (label skew)
    shards     sort by label, cut into n_parts x per_part equal shards, deal per_part shards to
               each part at random (McMahan et al. 2017): with as many shards as classes, each
               part holds exactly per_part classes, the hardest of the three
"""
from __future__ import annotations

import numpy as np


def sample_indices(n_items: int, n: int, seed: int) -> np.ndarray:
    """n of range(n_items), chosen at random with seed, sorted. Image folders and partitions list
    images class by class, so a prefix would hold only one or two classes: never sample a prefix."""
    return np.sort(np.random.default_rng(seed).permutation(n_items)[:n])


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


def partition_shards(labels: np.ndarray, n_parts: int, per_part: int, seed: int) -> list[np.ndarray]:
    """Label-sorted shards: the items sorted by label (ties in a seeded random order) are cut into
    n_parts * per_part nearly equal shards, and each part gets per_part of them, dealt at random."""
    labels = np.asarray(labels)
    n_shards = n_parts * per_part
    if per_part < 1 or len(labels) < n_shards:
        raise ValueError(f"cannot cut {len(labels)} items into {n_parts} x {per_part} shards")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    shards = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards)
    return [np.sort(np.concatenate([shards[s] for s in deal[k * per_part:(k + 1) * per_part]])).astype(np.int64)
            for k in range(n_parts)]


def partition(labels: np.ndarray, n_parts: int, kind: str, alpha: float, seed: int,
              shards_per_peer: int = 2) -> list[np.ndarray]:
    if kind == "iid":
        return partition_iid(len(labels), n_parts, seed)
    if kind == "dirichlet":
        return partition_dirichlet(labels, n_parts, alpha, seed)
    if kind == "shards":
        return partition_shards(labels, n_parts, shards_per_peer, seed)
    raise ValueError(f"unknown partition {kind!r}; use iid, dirichlet or shards")


def histogram(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> list[list[int]]:
    """Images per class (columns) of each part (rows)."""
    labels = np.asarray(labels)
    return [np.bincount(labels[p], minlength=n_classes).tolist() for p in parts]
