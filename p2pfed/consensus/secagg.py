"""Secure aggregation's maths and keys (security.secure_aggregation): fixed point in the integers
mod 2^64, pairwise masks that cancel in the sum over all members, and self-masks.

    fixed point  a member's weighted round state w_i x_i (w_i = n_i / W, public) as
                 rint(w_i x_i 2^FRAC_BITS) mod 2^64. The members' values add up mod 2^64
                 without wrapping while |x| < 2^RANGE_BITS, and the decoded mean is within
                 k 2^-(FRAC_BITS + 1) of the float64 mean before its rounding to float32
                 (k members, each rounding once). BatchNorm sums use 128 bits (WIDE_FRAC_BITS
                 fraction bits, two uint64 limbs): they are small vectors of large and tiny sums.
    pair masks   for every pair of members a key from X25519 between their mask keys (one
                 ephemeral key pair per peer process, sent in `ready`), expanded with HKDF-SHA256
                 into an AES-256 key; the stream for one exchange is AES-256 in counter mode from
                 an IV of the run's round, attempt, member list and purpose. Member i adds the stream of pair (i, j)
                 when i < j and subtracts it when i > j: the masks cancel only in the sum over
                 every member of the exchange. With security.mask_degree = d, only neighbours in
                 a Harary graph of degree d share masks (neighbours(), as in SecAgg+).
    self masks   a fresh random seed per member and attempt; its AES-CTR stream is added too, and
                 the seed is released only once every reducer holds every part (butterfly.py), so
                 no one can unmask a sum before the barrier.

Pure apart from the randomness of new keys and seeds; numpy and `cryptography`, no sockets.
"""
from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FRAC_BITS = 32                  # fraction bits of a masked round-state value
RANGE_BITS = 30                 # |value| < 2^RANGE_BITS, so a sum of weighted values stays below 2^62
WIDE_FRAC_BITS = 64             # fraction bits of a 128-bit BatchNorm sum (the integer part is the high limb)
WIDE_RANGE_BITS = 56            # |value| < 2^WIDE_RANGE_BITS, so 128 members' sum stays below 2^63
KEY_INFO = b"p2pfed secure aggregation v1 pair key"
NONCE_TAG = b"p2pfed secure aggregation v1 nonce\n"
U64 = np.dtype("<u8")


class RangeError(ValueError):
    """A value is too large for the fixed-point range; the message names where."""


class NotCancelled(ValueError):
    """A masked sum whose masks did not cancel: some of its words lie beyond what any k members'
    values can add up to. Masks that do not cancel leave words spread uniformly over 2^64 (or
    2^128), so a shard of L words passes the check with probability at most 2^-L (64 bits) or
    (k / 128)^L (128 bits)."""


# ------------------------------------------------------------------ fixed point (64 bits)

def encode(x: np.ndarray, weight: float) -> np.ndarray:
    """rint(x * weight * 2^FRAC_BITS) as uint64 (two's complement), x float32 or float64."""
    x = np.asarray(x)
    if x.size and not (np.max(x) < 2.0 ** RANGE_BITS and np.min(x) > -2.0 ** RANGE_BITS):
        i = int(np.argmax(np.abs(x.astype(np.float64))))
        raise RangeError(f"value {x.flat[i]:.6g} at position {i} is beyond the fixed-point range "
                         f"+-2^{RANGE_BITS} of secure aggregation")
    scaled = np.multiply(x, float(weight) * 2.0 ** FRAC_BITS, dtype=np.float64)
    out = np.empty(x.shape, dtype=np.int64)
    np.rint(scaled, out=out, casting="unsafe")          # round half to even, straight into int64
    return out.view(U64)


def decode(total: np.ndarray) -> np.ndarray:
    """The float32 value of a sum of encoded values (uint64, read as a signed 64-bit integer)."""
    return (total.view(np.int64).astype(np.float64) * 2.0 ** -FRAC_BITS).astype(np.float32)


def check_cancelled(total: np.ndarray, k: int) -> None:
    """A sum of k members' encode(x_i, w_i / W) (after the self-masks are removed): each is below
    2^(RANGE_BITS + FRAC_BITS) x w_i / W and rounds by at most 1/2, so |sum| <= 2^(RANGE_BITS +
    FRAC_BITS) + k in every word when the masks cancelled. NotCancelled names the first word beyond."""
    limit = np.int64(2 ** (RANGE_BITS + FRAC_BITS) + k)
    words = total.view(np.int64)
    beyond = np.flatnonzero((words > limit) | (words < -limit))
    if beyond.size:
        raise NotCancelled(f"{beyond.size} of its {words.size} words are beyond +-2^{RANGE_BITS + FRAC_BITS} + {k} "
                           f"(word {int(beyond[0])}: {int(words[beyond[0]])})")


def error_bound(k: int) -> float:
    """The largest |decoded - exact float64 mean| before the final rounding to float32."""
    return k * 2.0 ** -(FRAC_BITS + 1)


# ------------------------------------------------------------------ fixed point (128 bits, two limbs)

def wide_encode(x: np.ndarray) -> np.ndarray:
    """x (float64) as 128-bit fixed point with WIDE_FRAC_BITS fraction bits: uint64 [2, n],
    row 0 the low limb (the fraction), row 1 the high limb (the integer part, two's complement)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.abs(x) < 2.0 ** WIDE_RANGE_BITS):            # NaN fails too
        i = int(np.argmax(~(np.abs(x) < 2.0 ** WIDE_RANGE_BITS)))
        raise RangeError(f"sum {x[i]:.6g} at position {i} is beyond the fixed-point range +-2^{WIDE_RANGE_BITS}")
    a = np.abs(x)                                       # |x|, then negated mod 2^128: a small negative x
    hi = np.floor(a)                                    # keeps all its bits (1 - |x| would not)
    lo = np.rint((a - hi) * 2.0 ** WIDE_FRAC_BITS)      # < 2^64 - 2^11: exact in float64, fits uint64
    magnitude = np.stack([lo.astype(U64), hi.astype(U64)])
    return np.where(x < 0, wide_add(np.zeros_like(magnitude), magnitude, -1), magnitude)


def wide_add(a: np.ndarray, b: np.ndarray, sign: int = 1) -> np.ndarray:
    """a + b (sign 1) or a - b (sign -1) mod 2^128, on [2, n] uint64 limbs."""
    lo = a[0] + b[0] if sign > 0 else a[0] - b[0]
    carry = (lo < a[0]) if sign > 0 else (lo > a[0])
    hi = a[1] + b[1] if sign > 0 else a[1] - b[1]
    hi = hi + carry.astype(U64) if sign > 0 else hi - carry.astype(U64)
    return np.stack([lo, hi])


def check_wide_cancelled(total: np.ndarray, k: int) -> None:
    """A sum of k members' wide_encode(x_i), |x_i| < 2^WIDE_RANGE_BITS: its high limb, read as a
    signed integer, is within +-k x 2^WIDE_RANGE_BITS when the masks cancelled."""
    limit = np.int64(min(k << WIDE_RANGE_BITS, 2 ** 63 - 1))   # from 128 members on, no high word fails it
    high = total[1].view(np.int64)
    beyond = np.flatnonzero((high > limit) | (high < -limit))
    if beyond.size:
        raise NotCancelled(f"{beyond.size} of its {high.size} values are beyond +-{k} x 2^{WIDE_RANGE_BITS} "
                           f"(value {int(beyond[0])})")


def wide_decode(total: np.ndarray) -> np.ndarray:
    """The float64 value of a 128-bit sum, to float64's relative precision: a negative sum is
    negated first, so that a small one is not the difference of two numbers near 1."""
    negative = total[1].view(np.int64) < 0
    magnitude = np.where(negative, wide_add(np.zeros_like(total), total, -1), total)
    value = magnitude[1].astype(np.float64) + magnitude[0].astype(np.float64) * 2.0 ** -WIDE_FRAC_BITS
    return np.where(negative, -value, value)


# ------------------------------------------------------------------ keys and streams

class MaskKey:
    """This peer process's ephemeral X25519 key pair for pair masks, and the pair keys it derived."""

    def __init__(self, private: X25519PrivateKey | None = None):
        self._private = private or X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes_raw().hex()
        self._pairs: dict[str, bytes] = {}

    def pair_key(self, theirs: str) -> bytes:
        """The 32-byte AES-256 key this peer shares with the holder of public key `theirs` (hex)."""
        key = self._pairs.get(theirs)
        if key is None:
            if theirs == self.public:
                raise ValueError("a pair key needs two different mask keys")
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(theirs)))
            info = KEY_INFO + b"".join(sorted([bytes.fromhex(self.public), bytes.fromhex(theirs)]))
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
            self._pairs[theirs] = key
        return key


def is_key(text: str) -> bool:
    """A mask key on the wire: 64 lower-case hex digits (32 bytes)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def nonce(rnd: int, attempt: int, members, purpose: str) -> bytes:
    """The 16-byte initial counter block of one exchange's streams: 12 bytes of SHA-256(tag,
    round, attempt, members, purpose), then a 32-bit zero. Every member computes the same."""
    text = NONCE_TAG + f"{rnd}|{attempt}|{','.join(map(str, members))}|{purpose}".encode()
    return hashlib.sha256(text).digest()[:12] + b"\0\0\0\0"


def stream(key: bytes, nonce16: bytes, n: int, offset: int = 0) -> np.ndarray:
    """Words offset .. offset + n - 1 of the keystream of AES-256-CTR (key, counter block
    nonce16, a 128-bit big-endian counter) as uint64, little-endian: the counter starts at the
    block that holds word offset (a block is 16 bytes: 2 words)."""
    block, skip = divmod(offset, 2)
    start = ((int.from_bytes(nonce16, "big") + block) % 2 ** 128).to_bytes(16, "big")
    enc = Cipher(algorithms.AES(key), modes.CTR(start)).encryptor()
    out = np.empty(n + skip + 2, dtype=U64)            # update_into wants room for one more block
    enc.update_into(_zeros(8 * (n + skip)), memoryview(out).cast("B"))
    return out[skip:skip + n]


@functools.lru_cache(maxsize=4)
def _zeros(nbytes: int) -> memoryview:
    """Read-only zero bytes to encrypt into a keystream (kept: a round needs the same sizes again)."""
    return memoryview(bytes(nbytes))


def keys_digest(keys: list[str]) -> str:
    """SHA-256 over the members' mask keys in member order: a part names the keys it was masked with."""
    return hashlib.sha256(b"".join(bytes.fromhex(k) for k in keys)).hexdigest()


def pair_mask(mine: MaskKey, me: int, keys: dict[int, str], nonce16: bytes, n: int, words: int = 1) -> np.ndarray:
    """Sum over the other members j of +stream(i, j) (me < j) or -stream(i, j) (me > j), mod 2^64;
    `words` streams per value (2 for 128-bit values: [2, n], the low limb first, added with carry)."""
    if words == 1:
        total = np.zeros(n, dtype=U64)
        for j in sorted(keys):
            if j != me:
                (np.add if me < j else np.subtract)(total, stream(mine.pair_key(keys[j]), nonce16, n), out=total)
        return total
    total = np.zeros((2, n), dtype=U64)
    for j in sorted(keys):
        if j != me:
            s = stream(mine.pair_key(keys[j]), nonce16, 2 * n).reshape(2, n)
            total = wide_add(total, s, 1 if me < j else -1)
    return total


def neighbours(members, rnd: int, attempt: int, me: int, degree: int = 0) -> set[int]:
    """The members `me` shares pair masks with in this attempt. With degree 0 (the default), or a
    group of at most degree + 1 members, every other member. Else a Harary graph of that (even)
    degree on a relabelled ring, as in SecAgg+ (Bell et al. 2020): the members in the order of
    SHA-256(N(graph) + the member id in decimal ASCII) (N(graph): the attempt's 16-byte counter
    block for purpose "graph"), each joined to the degree / 2 nearest on either side. Every member
    computes the same graph; a new attempt relabels it."""
    members = sorted(members)
    if degree == 0 or len(members) <= degree + 1:
        return {m for m in members if m != me}
    salt = nonce(rnd, attempt, members, "graph")
    ring = sorted(members, key=lambda m: hashlib.sha256(salt + str(m).encode()).digest())
    at, half = ring.index(me), degree // 2
    return {ring[(at + d) % len(ring)] for d in range(-half, half + 1) if d != 0}


def part_masks(mine: MaskKey, me: int, keys: dict[int, str], nonce16: bytes, bounds: list[tuple[int, int]],
               near: set[int] | None = None) -> np.ndarray:
    """The pair masks of my parts in a butterfly whose members are sorted(keys), shard j of
    bounds going to the j-th member: on shard j, +-stream(i, i') for every pair of neighbours
    (`near`: neighbours(); None: every member) other than that shard's reducer, words lo .. hi - 1
    of the pair's stream. The reducer knows its own pair streams, so they would hide nothing from
    it; it adds no mask to its own shard (zeros there). In the reducer's sum of shard j every mask
    meets its negative, since the graph is symmetric: they cancel."""
    members = sorted(keys)
    out = np.zeros(bounds[-1][1] if bounds else 0, dtype=U64)
    for j, (lo, hi) in enumerate(bounds):
        if members[j] == me:
            continue
        for other in members:
            if other in (me, members[j]) or (near is not None and other not in near):
                continue
            s = stream(mine.pair_key(keys[other]), nonce16, hi - lo, offset=lo)
            (np.add if me < other else np.subtract)(out[lo:hi], s, out=out[lo:hi])
    return out


def masks(mine: MaskKey, me: int, keys: dict[int, str], seed: bytes, rnd: int, attempt: int,
          bounds: list[tuple[int, int]], degree: int = 0) -> np.ndarray:
    """Every mask member `me` adds to its vector in one attempt: part_masks + its self-mask on
    every shard but its own. They depend on the round, the attempt, the members' keys and the
    seed, not on the values: masked.Ahead computes them while the peer trains."""
    members = sorted(keys)
    out = part_masks(mine, me, keys, nonce(rnd, attempt, members, "part"), bounds,
                     neighbours(members, rnd, attempt, me, degree))
    for j, (lo, hi) in enumerate(bounds):
        if members[j] != me:
            out[lo:hi] += self_mask(seed, nonce(rnd, attempt, members, "self"), lo, hi)
    return out


def masked_vector(x: np.ndarray, weight: float, mine: MaskKey, me: int, keys: dict[int, str], seed: bytes,
                  rnd: int, attempt: int, bounds: list[tuple[int, int]], ahead: np.ndarray | None = None,
                  degree: int = 0) -> np.ndarray:
    """What member `me` cuts into its parts: encode(x, weight) + masks(...) (or `ahead`, the same
    masks computed earlier; its own shard, whose part it keeps, has none)."""
    out = encode(x, weight)
    out += masks(mine, me, keys, seed, rnd, attempt, bounds, degree) if ahead is None else ahead
    return out


def unmasked(total: np.ndarray, seeds: dict[int, bytes], reducer: int, rnd: int, attempt: int,
             lo: int, hi: int) -> np.ndarray:
    """The reducer's sum of shard [lo, hi) without the self-masks (every member's seed but its
    own), checked (NotCancelled) and decoded to float32."""
    self_nonce = nonce(rnd, attempt, sorted(seeds), "self")
    for m, seed in seeds.items():
        if m != reducer:
            np.subtract(total, self_mask(seed, self_nonce, lo, hi), out=total)
    check_cancelled(total, len(seeds))
    return decode(total)


def new_seed() -> bytes:
    """A fresh self-mask seed: 32 random bytes from the OS."""
    return os.urandom(32)


def self_mask(seed: bytes, nonce16: bytes, lo: int, hi: int) -> np.ndarray:
    """Words lo .. hi - 1 of the self-mask stream of this seed."""
    return stream(seed, nonce16, hi - lo, offset=lo)
