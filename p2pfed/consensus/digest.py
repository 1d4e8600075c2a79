"""The digest of a round state: equal digests mean bit-identical states.

SHA-256 of: the tag, one layout line per tensor ("name|dtype|shape\n", state order), the
SHA-256 of every CHUNK_FLOATS-long chunk of the flat float32 vector (in order), and the raw
bytes of the integer buffers (state order). Chunks let a peer hash the model while its shards
arrive, in any order, and the result does not depend on how many shards there were. Pure:
numpy and hashlib only; docs/protocol.md, "The digest", is the specification.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .averaging import flatten, is_float

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
