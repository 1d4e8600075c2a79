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


# ---------------------------------------------------------------- digest
# SHA-256 of: the tag, one layout line per tensor ("name|dtype|shape\n", state order), the
# SHA-256 of every CHUNK_FLOATS-long chunk of the flat float32 vector (in order), and the raw
# bytes of the integer buffers (state order). Chunks let a peer hash the model while its
# shards arrive, in any order, and the result does not depend on how many shards there were.
DIGEST_TAG = b"p2pfed-digest-2\n"
CHUNK_FLOATS = 1 << 18          # 1 MiB of float32


def layout(state: dict) -> bytes:
    return "".join(f"{name}|{np.asarray(a).dtype.str}|{list(np.shape(a))}\n" for name, a in state.items()).encode()


def chunk_bounds(n: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + CHUNK_FLOATS)) for lo in range(0, n, CHUNK_FLOATS)]


def chunk_digest(flat_part: np.ndarray) -> bytes:
    return hashlib.sha256(memoryview(np.ascontiguousarray(flat_part, dtype=np.float32)).cast("B")).digest()


def combine_digest(layout_bytes: bytes, chunk_digests: list[bytes], ints: list[np.ndarray]) -> str:
    h = hashlib.sha256(DIGEST_TAG)
    h.update(layout_bytes)
    for d in chunk_digests:
        h.update(d)
    for a in ints:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def digest(state: dict) -> str:
    """The model's digest (see above): equal digests mean bit-identical models."""
    flat = flatten(state)
    chunks = [chunk_digest(flat[lo:hi]) for lo, hi in chunk_bounds(flat.size)]
    return combine_digest(layout(state), chunks, [np.asarray(v) for v in state.values() if not is_float(v)])


class IncrementalDigest:
    """Hashes a flat vector while its pieces arrive, in any order: a chunk is hashed as soon
    as all of it has been placed. digest() once every float has been placed."""

    def __init__(self, flat: np.ndarray):
        self.flat = flat
        self.bounds = chunk_bounds(flat.size)
        self.missing = [hi - lo for lo, hi in self.bounds]
        self.chunks: list[bytes | None] = [None] * len(self.bounds)

    def placed(self, lo: int, hi: int) -> None:
        """flat[lo:hi] now holds its final values (each float is placed once)."""
        for c in range(lo // CHUNK_FLOATS, (hi - 1) // CHUNK_FLOATS + 1 if hi > lo else 0):
            clo, chi = self.bounds[c]
            self.missing[c] -= min(hi, chi) - max(lo, clo)
            if self.missing[c] == 0:
                self.chunks[c] = chunk_digest(self.flat[clo:chi])

    def digest(self, layout_bytes: bytes, ints: list[np.ndarray]) -> str:
        if any(c is None for c in self.chunks):
            raise ValueError("not every chunk has been placed")
        return combine_digest(layout_bytes, self.chunks, ints)


def majority(digests: dict[int, str], n_members: int) -> str | None:
    """The digest held by a strict majority of an attempt's n_members members (members that
    died before sending theirs count against every digest), or None: a tie or no majority."""
    counts: dict[str, int] = {}
    for d in digests.values():
        counts[d] = counts.get(d, 0) + 1
    best = max(counts, key=counts.get, default=None)
    return best if best is not None and 2 * counts[best] > n_members else None


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
