"""Messages on the wire: a msgpack header frame, then raw array buffers. No pickle, ever.

Frames of every message (after ZeroMQ's routing id, which the ROUTER adds):

    frame 0   msgpack map: {"v": 1, "kind": str, "from": int, ...kind fields...,
                            "arrays": [[dtype, [shape...]], ...]}
    frame 1.. one raw C-order buffer per entry of "arrays" (little-endian)

Kinds and their fields are in KINDS below and in docs/protocol.md. decode() trusts nothing:
it bounds sizes, checks every field's type, checks dtype/shape against the buffer length,
and checks float buffers are finite. Schema checks against the local model are in
check_schema/check_state, called by the receiver which knows the model (a shard's exact length is
checked where it is decoded, consensus/compress.py).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import msgpack
import numpy as np

from .protocol import (ALLOWED_DTYPES, CODEC_CHUNK, CODECS, COUNT_LIMIT, DIM_LIMIT, ID_LIMIT, INT_LIMIT, MAX_ARRAYS, MAX_DIMS,
                       MAX_HEADER_BYTES, RECIPE_MAX_CHARS, VERSION)

# kind -> {field: type}; "from" and "v" are common to all. Types: int, str, float, list, dict.
KINDS: dict[str, dict[str, type]] = {
    "hb":      {"round": int, "phase": str, "committed": int},       # heartbeat, from the transport thread
    "ready":   {"round": int, "n_samples": int, "recipe": str},      # trained, waiting for a group
    "group":   {"round": int, "attempt": int, "members": list, "weights": list},  # leader's proposal
    "part":    {"round": int, "attempt": int, "shard": int, "members": list},  # + 1 float32 array: my slice of shard
    "reduced": {"round": int, "attempt": int, "shard": int, "ints": list},  # + averaged shard (+ int arrays)
    "digest":  {"round": int, "attempt": int, "digest": str},        # my SHA-256 after all-gather
    "abort":   {"round": int, "attempt": int, "reason": str, "dead": list},  # attempt failed; who I saw die
    "commit":  {"round": int, "digest": str, "members": list},       # round committed (for non-members)
    "fetch":   {"round": int},                                       # send me your latest consensus
    "model":   {"round": int, "digest": str, "names": list, "members": list},  # + one array per tensor
    "report":  {"round": int, "stats": dict},                        # per-round stats for the summary
    "bnstats": {"round": int},                                       # + 1 float64 array: BatchNorm sums (bnstats.py)
    "bnsync":  {"round": int, "attempt": int, "seq": int},           # + 1 float64 array: a step's BatchNorm sums
    "bndigest": {"round": int, "digest": str},                       # digest of the model with pooled BN stats
    "held":    {"round": int, "attempt": int},                       # secure aggregation: I hold every part of my slice
    "seed":    {"round": int, "attempt": int, "seed": str},          # secure aggregation: my self-mask seed (64 hex)
    "done":    {"round": int},                                       # the writer finished; you may exit
    "bye":     {"round": int},                                       # clean exit, do not wait for me
}

# kind -> {field: type} of fields a message may carry. Absent, they have the default named here.
OPTIONAL: dict[str, dict[str, type]] = {
    "hb":      {"life": str},                  # a random id of the sender's process: a new one = it restarted
    "ready":   {"mask_key": str,               # secure aggregation: my X25519 mask key (64 hex)
                "protocol": int,               # the sender's protocol number (consensus/recipe.py); absent = 1
                "tried": int},                 # the last attempt of the round the sender took part in; absent = 0
    "part":    {"codec": str, "base": str,     # codec: "f32" (absent), "f16", "i8" or "m64"; base: the anchor's digest
                "keys": str, "sealed": bool},  # m64: the digest of the members' mask keys; whether I saw a sum
    "reduced": {"codec": str, "base": str},
    "bnstats": {"keys": str},                  # secure aggregation: the vector is masked (uint64 [2, n])
    "bnsync":  {"keys": str},
}


class WireError(ValueError):
    """A frame was rejected; str(e) is the reason that goes into the log."""


@dataclass
class Message:
    kind: str
    sender: int
    header: dict
    arrays: list[np.ndarray] = field(default_factory=list)
    received: float = 0.0       # when (monotonic) the network thread took it off the socket (0: not received)

    def __getitem__(self, key):
        return self.header[key]


def encode(kind: str, sender: int, arrays: list[np.ndarray] = (), **fields) -> list:
    """Header + buffers; buffers are zero-copy memoryviews of contiguous arrays."""
    arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in map(np.asarray, arrays)]
    header = {"v": VERSION, "kind": kind, "from": sender, **fields,
              "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}
    return [msgpack.packb(header, use_bin_type=True)] + [memoryview(a).cast("B") if a.size else b"" for a in arrays]


def _check_type(kind: str, name: str, value, typ: type) -> None:
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise WireError(f"{kind}.{name} must be {typ.__name__}, got {type(value).__name__}")
    if typ is int and not 0 <= value < INT_LIMIT:
        raise WireError(f"{kind}.{name} = {value} is out of range 0..2^63-1")


def decode(frames: list, max_bytes: int) -> Message:
    """Parse and validate frames (bytes or zmq.Frame). Raises WireError with the reason."""
    if not frames:
        raise WireError("empty message")
    total = sum(len(memoryview(f.buffer) if hasattr(f, "buffer") else f) for f in frames)
    if total > max_bytes:
        raise WireError(f"message of {total} bytes exceeds the limit of {max_bytes}")
    raw = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for garbage
        raise WireError(f"header is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise WireError("header is not a map")
    if header.get("v") != VERSION:
        raise WireError(f"protocol version {header.get('v')!r}, expected {VERSION}")
    kind = header.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise WireError(f"unknown message kind {kind!r}")
    sender = header.get("from")
    _check_type(kind, "from", sender, int)
    for name, typ in KINDS[kind].items():
        if name not in header:
            raise WireError(f"{kind} message lacks field {name!r}")
        _check_type(kind, name, header[name], typ)
    for name, typ in OPTIONAL.get(kind, {}).items():
        if name in header:
            _check_type(kind, name, header[name], typ)
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise WireError("arrays must be a list of at most %d entries" % MAX_ARRAYS)
    if len(specs) != len(frames) - 1:
        raise WireError(f"header lists {len(specs)} arrays but {len(frames) - 1} buffers follow")
    arrays = []
    for i, (spec, frame) in enumerate(zip(specs, frames[1:])):
        if (not isinstance(spec, list) or len(spec) != 2 or not isinstance(spec[0], str)
                or not isinstance(spec[1], list) or len(spec[1]) > MAX_DIMS
                or not all(type(d) is int and 0 <= d < DIM_LIMIT for d in spec[1])):
            raise WireError(f"array {i}: spec must be [dtype, [dims]] with at most {MAX_DIMS} dims in 0..2^31-1")
        dtype, shape = spec
        if dtype not in ALLOWED_DTYPES:
            raise WireError(f"array {i}: dtype {dtype!r} not allowed")
        buf = frame.buffer if hasattr(frame, "buffer") else frame
        # Python ints: no fixed-width arithmetic on sizes from the wire, so nothing can wrap
        need = math.prod(shape) * np.dtype(dtype).itemsize
        if need != len(buf):
            raise WireError(f"array {i}: {dtype}{shape} needs {need} bytes, buffer has {len(buf)}")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise WireError(f"array {i} contains NaN or Inf")
        arrays.append(arr)
    return Message(kind, sender, header, arrays)


# ------------------------------------------------------------- schema checks against the local model

def check_state(names: list, arrays: list[np.ndarray], like: dict) -> "OrderedDict[str, np.ndarray]":
    """A received state must have exactly the local model's names, dtypes and shapes, in order."""
    if list(names) != list(like.keys()):
        bad = next((n for n, m in zip(names, like) if n != m), None) or f"{len(names)} vs {len(like)} tensors"
        raise WireError(f"tensor names differ from the local model (first difference: {bad})")
    if len(arrays) != len(like):
        raise WireError(f"{len(arrays)} arrays for {len(like)} tensors")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for (name, ref), arr in zip(like.items(), arrays):
        if arr.dtype != ref.dtype or arr.shape != ref.shape:
            raise WireError(f"tensor {name} is {arr.dtype}{list(arr.shape)}, expected {ref.dtype}{list(ref.shape)}")
        out[name] = arr
    return out


def _ids(kind: str, name: str, values, peer_ids=None) -> list[int]:
    if not all(type(v) is int and 0 <= v < ID_LIMIT for v in values):
        raise WireError(f"{kind}.{name} must be a list of peer ids (ints in 0..2^31-1)")
    if peer_ids is not None and not set(values) <= peer_ids:
        raise WireError(f"{kind}.{name} {sorted(set(values) - peer_ids)[:5]} are not peers of the config")
    return values


def check_schema(msg: Message, like: dict, n_floats: int, peer_ids: set[int] | None = None) -> None:
    """Cheap checks of a received message against the local model (and, if given, the config's
    peer ids), before it is filed. Raises only WireError, whatever the message holds."""
    if msg.kind == "ready":
        if len(msg["recipe"]) > RECIPE_MAX_CHARS:
            raise WireError(f"ready.recipe of {len(msg['recipe'])} characters exceeds {RECIPE_MAX_CHARS}")
        if not 0 < msg["n_samples"] < COUNT_LIMIT:
            raise WireError(f"ready.n_samples = {msg['n_samples']} is outside 1..2^53-1")
    if msg.kind in ("model", "commit", "part", "group"):
        _ids(msg.kind, "members", msg["members"], peer_ids)
    if msg.kind == "abort":
        _ids(msg.kind, "dead", msg["dead"], peer_ids)
    if msg.kind in ("digest", "commit", "model", "bndigest") and not _is_digest(msg["digest"]):
        raise WireError(f"{msg.kind}.digest must be 64 lower-case hex digits")
    for name in ("mask_key", "keys", "seed"):
        if name in msg.header and not _is_digest(msg[name]):
            raise WireError(f"{msg.kind}.{name} must be 64 lower-case hex digits")
    if msg.kind == "model":
        if not all(isinstance(n, str) for n in msg["names"]):
            raise WireError("model.names must be a list of strings")
        check_state(msg["names"], msg.arrays, like)
    elif msg.kind in ("part", "reduced"):
        codec = codec_of(msg)
        if codec not in CODECS:
            raise WireError(f"{msg.kind}.codec {codec!r} is not one of {list(CODECS)}")
        if "base" in msg.header and not _is_digest(msg["base"]):
            raise WireError(f"{msg.kind}.base must be 64 lower-case hex digits")
        if (codec in ("f16", "i8")) != ("base" in msg.header):
            raise WireError(f"{msg.kind}: a compressed shard names its base (the anchor's digest), a float32 one none")
        if (codec == "m64") != (msg.kind == "part" and "keys" in msg.header):
            raise WireError(f"{msg.kind}: a masked shard (m64) is a part that names its keys, and only it")
        n_shard = SHARD_ARRAYS[codec]
        if len(msg.arrays) < n_shard:
            raise WireError(f"{msg.kind} carries {len(msg.arrays)} arrays; a {codec} shard needs {n_shard}")
        arr = msg.arrays[0]
        want = SHARD_DTYPES[codec]
        if arr.dtype != want or arr.ndim != 1 or arr.size > n_floats:
            raise WireError(f"{msg.kind} shard is {arr.dtype}{list(arr.shape)}, expected {np.dtype(want)}[<= {n_floats}]")
        if codec == "i8":
            sc = msg.arrays[1]
            if sc.dtype != np.float32 or sc.ndim != 1 or sc.size != -(-arr.size // CODEC_CHUNK) or (sc < 0).any():
                raise WireError(f"{msg.kind} i8 scales are {sc.dtype}{list(sc.shape)}, expected float32"
                                f"[{-(-arr.size // CODEC_CHUNK)}] >= 0")
        if msg.kind == "reduced" and msg["ints"]:
            if not all(isinstance(n, str) for n in msg["ints"]):
                raise WireError("reduced.ints must be a list of tensor names")
            check_ints(msg["ints"], msg.arrays[n_shard:], like)
        elif len(msg.arrays) != n_shard:
            raise WireError(f"{msg.kind} carries {len(msg.arrays)} arrays, expected {n_shard}")
    elif msg.kind in ("bnstats", "bnsync"):
        arr = msg.arrays[0] if len(msg.arrays) == 1 else None
        plain = arr is not None and arr.dtype == np.float64 and arr.ndim == 1 and "keys" not in msg.header
        masked = (arr is not None and arr.dtype == np.uint64 and arr.ndim == 2 and arr.shape[0] == 2
                  and "keys" in msg.header)
        if not (plain or masked) or arr.size > 2 * n_floats:
            raise WireError(f"{msg.kind} carries one float64 vector, or with keys one masked uint64 [2, n], no longer "
                            f"than the model")
    elif msg.kind == "group":
        members, weights = msg["members"], msg["weights"]
        # the ids themselves were checked by _ids above
        if (len(members) != len(weights) or len(set(members)) != len(members) or members != sorted(members)
                or not all(type(w) is int and 0 < w < COUNT_LIMIT for w in weights)):
            raise WireError("group members/weights must be equal-length lists of distinct ascending ids and "
                            "positive counts below 2^53")


SHARD_DTYPES = {"f32": np.float32, "f16": np.float16, "i8": np.int8, "m64": np.uint64}  # a shard's values per codec
SHARD_ARRAYS = {"f32": 1, "f16": 1, "i8": 2, "m64": 1}                # arrays per shard (i8: + scales)


def codec_of(msg: Message) -> str:
    """The codec of a part or reduced message ("f32" when it names none)."""
    return msg.header.get("codec", "f32")


def _is_digest(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def check_ints(names: list, arrays: list[np.ndarray], like: dict) -> dict:
    expected = [k for k, v in like.items() if not np.issubdtype(v.dtype, np.floating)]
    if list(names) != expected:
        raise WireError(f"integer buffer names differ from the local model ({len(names)} vs {len(expected)})")
    if len(arrays) != len(names):
        raise WireError(f"{len(arrays)} integer buffers for {len(names)} names")
    out = {}
    for name, arr in zip(names, arrays):
        ref = like[name]
        if arr.dtype != ref.dtype or arr.shape != ref.shape:
            raise WireError(f"integer buffer {name} is {arr.dtype}{list(arr.shape)}, expected {ref.dtype}")
        out[name] = arr
    return out
