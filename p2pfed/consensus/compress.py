"""Compressed exchange (train.compression): the butterfly sends deltas in fewer bits.

What travels is the delta of each member's vector from the round's anchor, the last committed
round state (the same bits on every member: it is digest-agreed), plus that member's carried
rounding error (error feedback: what rounding lost in one round is sent in the next, Seide et al.
2014, Karimireddy et al. 2019). The reducer of a shard takes the weighted mean of the decoded
deltas, and sends that mean encoded again, with its own carried error for that shard. Every
member, the reducer too, rebuilds the shard as anchor + decode(encoded mean): the same bits
everywhere, so the digest still agrees exactly; what differs from the exact mean is bounded by
one rounding of each stage (docs/protocol.md, "Compressed shards").

Codecs (pure numpy, the same bits on every machine):
    f32   float32, no compression (round 1, which has no anchor, always uses it)
    f16   IEEE half precision: 2 bytes a value; deltas beyond +-65504 are clipped
    i8    int8 with one float32 scale per CHUNK values (max |x| / 127): about 1 byte a value
"""
from __future__ import annotations

import numpy as np

from ..net import wire
from ..net.protocol import CODEC_CHUNK as CHUNK
from ..net.protocol import CODECS

F16_MAX = 65504.0
CONFIG_CODECS = {"none": "f32", "fp16": "f16", "int8": "i8"}      # train.compression -> codec


class CodecError(ValueError):
    """Received compressed values do not fit the codec (dtype, length, scales); the message says how."""


def encode(codec: str, x: np.ndarray) -> list[np.ndarray]:
    """What to send for the float32 values x: one array, or (i8) the values and their scales."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if codec == "f32":
        return [x]
    if codec == "f16":
        return [np.clip(x, -F16_MAX, F16_MAX).astype(np.float16)]
    if codec == "i8":
        n = x.size
        pad = np.zeros(-n % CHUNK, np.float32)
        blocks = np.concatenate([x, pad]).reshape(-1, CHUNK)
        scales = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)
        safe = np.where(scales > 0, scales, np.float32(1))
        q = np.rint(blocks / safe[:, None]).clip(-127, 127).astype(np.int8)
        return [q.reshape(-1)[:n], scales]
    raise ValueError(f"unknown codec {codec!r}; one of {list(CODECS)}")


def n_arrays(codec: str) -> int:
    return wire.SHARD_ARRAYS[codec]


def decode(codec: str, arrays: list[np.ndarray], n: int) -> np.ndarray:
    """The float32 values of an encoded shard of length n; CodecError if the arrays do not fit."""
    if len(arrays) < n_arrays(codec):
        raise CodecError(f"{codec} needs {n_arrays(codec)} arrays, got {len(arrays)}")
    a = arrays[0]
    want = wire.SHARD_DTYPES[codec]
    if a.dtype != want or a.ndim != 1 or a.size != n:
        raise CodecError(f"{codec} shard is {a.dtype}{list(a.shape)}, expected {np.dtype(want)}[{n}]")
    if codec in ("f32", "f16") and not np.isfinite(a).all():
        raise CodecError(f"{codec} shard holds NaN or Inf")
    if codec == "f32":
        return a
    if codec == "f16":
        return a.astype(np.float32)
    scales = arrays[1]
    blocks = -(-n // CHUNK)
    if (scales.dtype != np.float32 or scales.ndim != 1 or scales.size != blocks
            or not np.isfinite(scales).all() or (scales < 0).any()):
        raise CodecError(f"i8 scales are {scales.dtype}{list(scales.shape)}, expected float32[{blocks}], "
                         f"finite and >= 0")
    with np.errstate(over="ignore"):
        out = a.astype(np.float32) * np.repeat(scales, CHUNK)[:n]
    if not np.isfinite(out).all():
        raise CodecError("i8 values times their scales overflow float32")
    return out


def roundtrip(codec: str, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(what to send, what the receivers will decode)."""
    payload = encode(codec, x)
    return payload, decode(codec, payload, x.size)


class ErrorFeedback:
    """The rounding error a peer carries to its next round: one vector for what it sends as a
    member, and one per shard range for what it sends as a reducer. A round's new errors are kept
    aside until the round commits (a failed attempt's rounding never happened)."""

    def __init__(self):
        self.sent: np.ndarray | None = None                    # the whole vector's error
        self.reduced: dict[tuple[int, int], np.ndarray] = {}   # (lo, hi) -> my shard's error
        self._pending: tuple | None = None

    def carried(self, n: int) -> np.ndarray:
        return self.sent if self.sent is not None and self.sent.size == n else np.zeros(n, np.float32)

    def carried_reduced(self, lo: int, hi: int) -> np.ndarray:
        return self.reduced.get((lo, hi), np.zeros(hi - lo, np.float32))

    def stage(self, sent: np.ndarray, shard: tuple[int, int], reduced: np.ndarray) -> None:
        self._pending = (sent, shard, reduced)

    def commit(self) -> None:
        if self._pending is not None:
            self.sent, shard, reduced = self._pending
            self.reduced = {shard: reduced}                    # a new group cuts other shards
            self._pending = None

    def drop(self) -> None:
        self._pending = None
