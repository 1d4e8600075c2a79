"""Writes docs/vectors/protocol-vectors.json: inputs and expected outputs that an independent
implementation of docs/protocol.md can check itself against. tests/test_vectors.py checks
p2pfed against the same file, so the spec and the code cannot drift apart.

    python tests/make_vectors.py      # only after a deliberate protocol change
"""
from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from p2pfed import config  # noqa: E402
from p2pfed.consensus import autosteps, averaging, compress, digest, recipe, secagg  # noqa: E402
from p2pfed.net import wire  # noqa: E402
from p2pfed.learning import balance  # noqa: E402

OUT = ROOT / "docs" / "vectors" / "protocol-vectors.json"


def tiny_state(seed: int) -> "OrderedDict[str, np.ndarray]":
    rng = np.random.default_rng(seed)
    return OrderedDict([
        ("conv.weight", rng.standard_normal((2, 1, 1, 3)).astype(np.float32)),
        ("bn.weight", rng.standard_normal(2).astype(np.float32)),
        ("bn.running_mean", rng.standard_normal(2).astype(np.float32)),
        ("bn.num_batches_tracked", np.array(seed + 5, dtype=np.int64)),
        ("fc.bias", rng.standard_normal(3).astype(np.float32)),
    ])


def state_json(state) -> list:
    return [{"name": k, "dtype": v.dtype.str, "shape": list(v.shape), "hex": v.tobytes().hex()}
            for k, v in state.items()]


def large_state() -> "OrderedDict[str, np.ndarray]":
    """Two digest chunks: w[i] = (i mod 1000) / 1000 as float32, for i < 300000; n = 7 (int64)."""
    w = (np.arange(300_000) % 1000).astype(np.float32) / np.float32(1000)
    return OrderedDict([("w", w), ("n", np.array(7, dtype=np.int64))])


def frames_json(kind: str, sender: int, arrays=(), **fields) -> dict:
    fs = wire.encode(kind, sender, [np.asarray(a) for a in arrays], **fields)
    return {"kind": kind, "from": sender, "fields": fields, "frames_hex": [bytes(f).hex() for f in fs]}


def arrays_hex(arrays) -> list:
    return [{"dtype": a.dtype.str, "shape": list(a.shape), "hex": a.tobytes().hex()} for a in arrays]


def compressed_round(anchor_state, states, weights, codec: str, carried: list, carried_reduced: list) -> dict:
    """One compressed round of docs/protocol.md ("Compressed shards"): member i sends
    encode(x_i - a + e_i) per shard; members[j] decodes, takes the weighted mean, adds its
    carried error r_j, encodes; everyone places a + decode(reduced)."""
    a = averaging.flatten(anchor_state)
    flats = [averaging.flatten(s) for s in states]
    bounds = averaging.shard_bounds(a.size, len(states))
    deltas = [f - a + e for f, e in zip(flats, carried)]
    parts = [[compress.encode(codec, d[lo:hi]) for lo, hi in bounds] for d in deltas]
    decoded = [np.concatenate([compress.decode(codec, p, hi - lo) for p, (lo, hi) in zip(row, bounds)])
               for row in parts]
    reduced, result, reducer_errors = [], np.empty_like(a), []
    for j, (lo, hi) in enumerate(bounds):
        mean = averaging.weighted_mean([d[lo:hi] for d in decoded], weights)
        sent = mean + carried_reduced[j]
        reduced.append(compress.encode(codec, sent))
        back = compress.decode(codec, reduced[-1], hi - lo)
        reducer_errors.append(sent - back)
        result[lo:hi] = a[lo:hi] + back
    ints = OrderedDict((k, v) for k, v in states[0].items() if not averaging.is_float(v))
    res = averaging.unflatten(result, ints, states[0])
    return {"codec": codec,
            "carried_member_errors_hex": [e.tobytes().hex() for e in carried],
            "carried_reducer_errors_hex": [r.tobytes().hex() for r in carried_reduced],
            "parts": [[arrays_hex(p) for p in row] for row in parts],
            "reduced": [arrays_hex(r) for r in reduced],
            "member_errors_out_hex": [(d - dec).tobytes().hex() for d, dec in zip(deltas, decoded)],
            "reducer_errors_out_hex": [r.tobytes().hex() for r in reducer_errors],
            "result": state_json(res), "digest": digest.digest(res)}


def mask_key(i: int) -> secagg.MaskKey:
    """Member i's mask key of the vectors: the X25519 private key of 32 bytes, each i + 1."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    return secagg.MaskKey(X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32))


def secure_round(states, members, weights, rnd: int = 4, attempt: int = 0) -> dict:
    """One round of docs/protocol.md ("Secure aggregation") with fixed keys and seeds: member i
    sends slice j of encode(w_i x_i) + the pair masks of the pairs without members[j] + its
    self-mask; members[j] adds the parts (its own unmasked), removes the other members'
    self-masks and decodes; the result is placed as without secure aggregation."""
    keys = {m: mask_key(m) for m in members}
    public = {m: k.public for m, k in keys.items()}
    seeds = {m: bytes([0xA0 + m]) * 32 for m in members}
    pair_nonce, self_nonce = (secagg.nonce(rnd, attempt, members, p) for p in ("part", "self"))
    flats = [averaging.flatten(s) for s in states]
    n, total_w = flats[0].size, float(sum(weights))
    bounds = averaging.shard_bounds(n, len(members))
    encoded = [secagg.encode(f, w / total_w) for f, w in zip(flats, weights)]
    masked = [secagg.masked_vector(f, w / total_w, keys[m], m, public, seeds[m], rnd, attempt, bounds)
              for m, f, w in zip(members, flats, weights)]
    sums, reduced = [], []
    for lo, hi in bounds:
        total = np.zeros(hi - lo, secagg.U64)
        for part in masked:
            total += part[lo:hi]
        sums.append(total.copy())
        reduced.append(secagg.unmasked(total, seeds, members[len(reduced)], rnd, attempt, lo, hi))
    ints = OrderedDict((k, v) for k, v in states[0].items() if not averaging.is_float(v))
    result = averaging.unflatten(np.concatenate(reduced), ints, states[0])
    vector = np.array([96.0, 1.5e-9, -0.25, 4.0e7, -3.0e-12], np.float64)
    bn_nonce = secagg.nonce(rnd, attempt, members, "bnsync/7")
    wide = [secagg.wide_add(secagg.wide_encode(vector * (i + 1)),
                            secagg.pair_mask(keys[m], m, public, bn_nonce, vector.size, words=2))
            for i, m in enumerate(members)]
    bn_total = wide[0]
    for w in wide[1:]:
        bn_total = secagg.wide_add(bn_total, w)
    # pooled BatchNorm statistics (consensus/pooling.py): attempt -1, purpose "bnstats/-1", the
    # committed round's members; the vector of member i is -vector x (i + 1), so the sum is negative
    st_nonce = secagg.nonce(rnd, -1, members, "bnstats/-1")
    st_wide = [secagg.wide_add(secagg.wide_encode(-vector * (i + 1)),
                               secagg.pair_mask(keys[m], m, public, st_nonce, vector.size, words=2))
               for i, m in enumerate(members)]
    st_total = st_wide[0]
    for w in st_wide[1:]:
        st_total = secagg.wide_add(st_total, w)
    return {"round": rnd, "attempt": attempt, "members": members, "weights": weights,
            "private_keys_hex": {str(m): (bytes([m + 1]) * 32).hex() for m in members},
            "mask_keys": {str(m): public[m] for m in members},
            "pair_keys_hex": {f"{a},{b}": keys[a].pair_key(public[b]).hex() for a in members for b in members if a < b},
            "keys_digest": secagg.keys_digest([public[m] for m in members]),
            "nonces_hex": {"part": pair_nonce.hex(), "self": self_nonce.hex(), "bnsync/7": bn_nonce.hex(),
                           "bnstats/-1": st_nonce.hex()},
            "nonce_texts": {"part": f"{rnd}|{attempt}|{','.join(map(str, members))}|part",
                            "bnstats/-1": f"{rnd}|-1|{','.join(map(str, members))}|bnstats/-1"},
            "seeds_hex": {str(m): seeds[m].hex() for m in members},
            "encoded_hex": [e.tobytes().hex() for e in encoded],
            "masked_hex": [x.tobytes().hex() for x in masked],
            "shard_bounds": [list(b) for b in bounds],
            "shard_sums_self_masked_hex": [x.tobytes().hex() for x in sums],
            "reduced_shards_hex": [r.tobytes().hex() for r in reduced],
            "result": state_json(result), "digest": digest.digest(result),
            "bnsync": {"seq": 7, "vector_of_member_i": "vector x (i + 1), i = position in members",
                       "vector_hex": vector.tobytes().hex(),
                       "wide_encoded_hex": [secagg.wide_encode(vector * (i + 1)).tobytes().hex()
                                            for i in range(len(members))],
                       "masked_hex": [w.tobytes().hex() for w in wide],
                       "sum_limbs_hex": bn_total.tobytes().hex(),
                       "sum_hex": secagg.wide_decode(bn_total).tobytes().hex()},
            "bnstats": {"attempt": -1, "purpose": "bnstats/-1", "members": members,
                        "vector_of_member_i": "-vector x (i + 1), i = position in members (vector: bnsync's)",
                        "wide_encoded_hex": [secagg.wide_encode(-vector * (i + 1)).tobytes().hex()
                                             for i in range(len(members))],
                        "masked_hex": [w.tobytes().hex() for w in st_wide],
                        "sum_limbs_hex": st_total.tobytes().hex(),
                        "sum_hex": secagg.wide_decode(st_total).tobytes().hex()}}


def sparse_graph(members: list[int], rnd: int, attempt: int, degree: int) -> dict:
    """The neighbours of every member with security.mask_degree = degree ("Secure aggregation", Neighbours)."""
    import hashlib
    salt = secagg.nonce(rnd, attempt, members, "graph")
    return {"round": rnd, "attempt": attempt, "members": members, "degree": degree,
            "graph_nonce_hex": salt.hex(),
            "ring": sorted(members, key=lambda m: hashlib.sha256(salt + str(m).encode()).digest()),
            "neighbours": {str(m): sorted(secagg.neighbours(members, rnd, attempt, m, degree)) for m in members}}


def build() -> dict:
    tiny = tiny_state(0)
    big = large_state()
    states = [tiny_state(s) for s in (1, 2, 3)]
    members, weights = [0, 1, 2], [3, 1, 2]
    flats = [averaging.flatten(s) for s in states]
    bounds = averaging.shard_bounds(flats[0].size, len(members))
    reduced = [averaging.weighted_mean([f[lo:hi] for f in flats], weights) for lo, hi in bounds]
    result = averaging.unflatten(np.concatenate(reduced), OrderedDict(
        (k, v) for k, v in states[0].items() if not averaging.is_float(v)), states[0])
    d = "0" * 63 + "1"
    part = flats[0][bounds[1][0]:bounds[1][1]]
    rng = np.random.default_rng(9)
    carried = [(rng.standard_normal(flats[0].size) * 1e-3).astype(np.float32) for _ in states]
    carried_red = [(rng.standard_normal(hi - lo) * 1e-3).astype(np.float32) for lo, hi in bounds]
    zero = [np.zeros(flats[0].size, np.float32) for _ in states]
    zero_red = [np.zeros(hi - lo, np.float32) for lo, hi in bounds]
    comp = [compressed_round(tiny, states, weights, "i8", zero, zero_red),
            compressed_round(tiny, states, weights, "i8", carried, carried_red),
            compressed_round(tiny, states, weights, "f16", carried, carried_red)]
    i8 = compress.encode("i8", part - averaging.flatten(tiny)[bounds[1][0]:bounds[1][1]])
    return {
        "about": "p2pfed protocol test vectors (docs/protocol.md). Arrays: numpy dtype.str, shape, raw C-order "
                 "little-endian bytes as hex. Regenerate with tests/make_vectors.py.",
        "digest": {
            "state": state_json(tiny),
            "layout_utf8": digest.layout(tiny).decode(),
            "flat_float32_hex": averaging.flatten(tiny).tobytes().hex(),
            "digest": digest.digest(tiny),
        },
        "digest_two_chunks": {"state": "w[i] = float32(i mod 1000) / float32(1000) for i < 300000 (<f4); n = 7 (<i8)",
                              "digest": digest.digest(big)},
        "round": {
            "members": members, "weights": weights,
            "inputs": [state_json(s) for s in states],
            "shard_bounds": [list(b) for b in bounds],
            "reduced_shards_hex": [r.tobytes().hex() for r in reduced],
            "integer_buffers_from": averaging.integer_source(members),
            "result": state_json(result),
            "digest": digest.digest(result),
        },
        "compressed_rounds": {"anchor": state_json(tiny), "members": members, "weights": weights,
                              "inputs": "the inputs of \"round\"", "rounds": comp},
        "secure_round": {"inputs": "the inputs of \"round\"", **secure_round(states, members, weights)},
        "sparse_graph": sparse_graph(list(range(16)), 4, 0, 8),
        "auto_choices": [{"exchange_s": e, "step_s": st, "k": k, "compression": c,
                          "choice": list(autosteps.choose(e, st, k, c))}
                         for e, st, k, c in ((0.01, 0.1, 1, "none"), (0.1, 0.1, 1, "none"), (0.1, 0.1, 4, "none"),
                                             (0.3, 0.1, 1, "none"), (0.3, 0.1, 1, "int8"), (100.0, 0.1, 1, "none"),
                                             (0.5, 0.02, 2, "fp16"))],
        "shares": [{"rates": {str(m): r for m, r in rates.items()}, "members": sorted(rates), "batch_size": b,
                    "shares": {str(m): x for m, x in balance.shares(rates, sorted(rates), b).items()}}
                   for rates, b in (({0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0, 4: 100 / 3}, 32),
                                    ({0: 3.0, 1: 2.0, 2: 2.0}, 7), ({0: 1000.0, 1: 1.0}, 16),
                                    ({0: 50.0, 1: 50.0, 2: None}, 10))],
        "recipe": {"protocol": recipe.PROTOCOL, "added": {k: v for k, v in sorted(recipe.ADDED.items())},
                   "default": recipe.of(config.Config()),
                   "batchnorm_sync": recipe.of(config.override(config.Config(), train={"batchnorm": "sync"}))},
        "frames": [
            frames_json("hb", 2, round=4, phase="train", committed=3),
            frames_json("ready", 2, round=4, n_samples=8000, recipe="data.seed=0;train.lr=0.05"),
            frames_json("group", 0, round=4, attempt=1, members=[0, 1, 2], weights=[3, 1, 2]),
            frames_json("part", 0, [part], round=4, attempt=0, shard=1, members=[0, 1, 2]),
            frames_json("reduced", 0, [reduced[0], states[0]["bn.num_batches_tracked"]], round=4, attempt=0,
                        shard=0, ints=["bn.num_batches_tracked"]),
            frames_json("part", 0, i8, round=4, attempt=0, shard=1, members=[0, 1, 2], codec="i8", base=d),
            frames_json("reduced", 0, [compress.encode("f16", reduced[0] - averaging.flatten(tiny)[:bounds[0][1]])[0],
                                       states[0]["bn.num_batches_tracked"]], round=4, attempt=0, shard=0,
                        ints=["bn.num_batches_tracked"], codec="f16", base=d),
            frames_json("digest", 1, round=4, attempt=0, digest=d),
            frames_json("abort", 1, round=4, attempt=0, reason="peer 2 died (silent for 4.0 s)", dead=[2]),
            frames_json("commit", 1, round=4, digest=d, members=[0, 1, 2]),
            frames_json("fetch", 3, round=4),
            frames_json("model", 1, list(result.values()), round=4, digest=digest.digest(result),
                        names=list(result), members=[0, 1, 2]),
            frames_json("report", 1, round=4, stats={"members": [0, 1, 2], "digest": d, "attempt": 0}),
            frames_json("bnstats", 1, [np.array([2.0, 0.5, -1.0], np.float64)], round=4),
            frames_json("bndigest", 1, round=4, digest=d),
            frames_json("bnsync", 2, [np.array([96.0, 1.5, -0.25, 40.0, 2.0], np.float64)], round=4, attempt=0,
                        seq=7),
            frames_json("ready", 2, round=4, n_samples=8000, recipe="data.seed=0;security.secure_aggregation=true",
                        mask_key=mask_key(2).public),
            frames_json("part", 0, [np.arange(3, dtype=secagg.U64) * np.uint64(2**61 + 7)], round=4, attempt=0, shard=1,
                        members=[0, 1, 2], codec="m64", keys=d, sealed=False),
            frames_json("held", 1, round=4, attempt=0),
            frames_json("seed", 1, round=4, attempt=0, seed=(bytes([0xA1]) * 32).hex()),
            frames_json("bnsync", 2, [np.arange(6, dtype=secagg.U64).reshape(2, 3)], round=4, attempt=0, seq=7, keys=d),
            frames_json("ready", 2, round=4, n_samples=8000, recipe="data.seed=0;train.lr=0.05", protocol=2),
            frames_json("done", 0, round=4),
            frames_json("bye", 2, round=4),
        ],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
