"""The maths of averaging: pure functions on numpy arrays, no sockets, no torch.

A model state is an ordered dict name -> numpy array. Float arrays are averaged
(weighted by sample counts); integer arrays (e.g. BatchNorm's num_batches_tracked) are
copied from one deterministic member, the lowest id. For the butterfly all-reduce the
float arrays are concatenated into one float32 vector cut into one shard per member. The
digest of a state is in digest.py.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

def is_float(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.floating)


def flatten(state: dict) -> np.ndarray:
    """All float arrays, in state order, as one float32 vector."""
    parts = [np.asarray(v, dtype=np.float32).ravel() for v in state.values() if is_float(v)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def unflatten(flat: np.ndarray, ints: dict, like: dict, copy: bool = True) -> "OrderedDict[str, np.ndarray]":
    """Inverse of flatten: float arrays from flat, integer arrays from ints, shapes/dtypes from like.
    copy=False makes the float32 arrays views of flat (no copy): flat must not change afterwards."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    offset = 0
    for name, ref in like.items():
        if is_float(ref):
            n = ref.size
            out[name] = flat[offset:offset + n].reshape(ref.shape).astype(ref.dtype, copy=copy)
            offset += n
        else:
            out[name] = np.array(ints[name], dtype=ref.dtype).reshape(ref.shape)
    if offset != flat.size:
        raise ValueError(f"flat vector has {flat.size} values, the model needs {offset}")
    return out


def shard_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """Cut range(n) into k contiguous, nearly equal shards: [(start, stop), ...]."""
    if k < 1:
        raise ValueError("need at least one shard")
    base, extra = divmod(n, k)
    bounds, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def weighted_mean(shards: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """sum_i w_i x_i / sum_i w_i, accumulated in float64, returned as float32.

    Accumulating in float64 makes the result the float64 mean rounded once, so it is
    within float32 rounding (6e-8 relative) of the exact mean, whatever the order. Two
    float64 buffers of one shard's size are the only temporaries.
    """
    if len(shards) != len(weights) or not shards:
        raise ValueError(f"{len(shards)} shards but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to > 0, got {weights}")
    acc = np.empty(shards[0].shape, dtype=np.float64)
    tmp = np.empty_like(acc)
    for i, (x, w) in enumerate(zip(shards, weights)):
        np.multiply(x, float(w) / total, out=acc if i == 0 else tmp, dtype=np.float64)
        if i:
            acc += tmp
    return acc.astype(np.float32)


def integer_source(members: list[int]) -> int:
    """The member whose integer buffers everyone copies: the lowest id."""
    return min(members)
