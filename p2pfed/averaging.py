"""The maths of averaging: pure functions on numpy arrays, no sockets, no torch.

A model state is an ordered dict name -> numpy array. Float arrays are averaged
(weighted by sample counts); integer arrays (e.g. BatchNorm's num_batches_tracked) are
copied from one deterministic member, the lowest id. For the butterfly all-reduce the
float arrays are concatenated into one float32 vector cut into one shard per member.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

State = "OrderedDict[str, np.ndarray]"


def is_float(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.floating)


def float_names(state: dict) -> list[str]:
    return [k for k, v in state.items() if is_float(v)]


def int_names(state: dict) -> list[str]:
    return [k for k, v in state.items() if not is_float(v)]


def flatten(state: dict) -> np.ndarray:
    """All float arrays, in state order, as one float32 vector."""
    parts = [np.asarray(v, dtype=np.float32).ravel() for v in state.values() if is_float(v)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def unflatten(flat: np.ndarray, ints: dict, like: dict) -> "OrderedDict[str, np.ndarray]":
    """Inverse of flatten: float arrays from flat, integer arrays from ints, shapes/dtypes from like."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    offset = 0
    for name, ref in like.items():
        if is_float(ref):
            n = ref.size
            out[name] = flat[offset:offset + n].reshape(ref.shape).astype(ref.dtype, copy=True)
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
    within float32 rounding (6e-8 relative) of the exact mean, whatever the order.
    """
    if len(shards) != len(weights) or not shards:
        raise ValueError(f"{len(shards)} shards but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to > 0, got {weights}")
    acc = np.zeros(shards[0].shape, dtype=np.float64)
    for x, w in zip(shards, weights):
        acc += np.asarray(x, dtype=np.float64) * (float(w) / total)
    return acc.astype(np.float32)


def integer_source(members: list[int]) -> int:
    """The member whose integer buffers everyone copies: the lowest id."""
    return min(members)


def digest(state: dict) -> str:
    """SHA-256 over a canonical serialization: per array, name, dtype, shape, then C-order bytes."""
    h = hashlib.sha256()
    for name, arr in state.items():
        a = np.asarray(arr)
        a = a if a.flags.c_contiguous else a.copy(order="C")
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def reference_mean(states: list[dict], weights: list[float]) -> "OrderedDict[str, np.ndarray]":
    """Float64 reference for tests: weighted mean of float arrays, ints from states[0]."""
    total = float(sum(weights))
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, ref in states[0].items():
        if is_float(ref):
            out[name] = sum(np.asarray(s[name], np.float64) * (w / total) for s, w in zip(states, weights))
        else:
            out[name] = np.array(ref)
    return out


def max_relative_error(state: dict, reference: dict) -> float:
    """max |a - b| / max(|b|, tiny) over all float arrays; the invariant bounds this by 1e-6."""
    worst = 0.0
    for name, ref in reference.items():
        if not is_float(ref):
            continue
        a = np.asarray(state[name], np.float64)
        b = np.asarray(ref, np.float64)
        scale = np.maximum(np.abs(b), 1e-6)
        if a.size:
            worst = max(worst, float(np.max(np.abs(a - b) / scale)))
    return worst
