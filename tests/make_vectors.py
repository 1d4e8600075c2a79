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
from p2pfed.consensus import autosteps, averaging, compress, digest  # noqa: E402
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
            frames_json("done", 0, round=4),
            frames_json("bye", 2, round=4),
        ],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
