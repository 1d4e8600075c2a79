"""The implementation against the protocol's test vectors (docs/vectors/protocol-vectors.json):
digest byte layout, shard cut rule, the weighted mean's exact bits, and the encoded frames of
every message kind. If this fails, either the code or the spec changed: they must agree."""
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from p2pfed.consensus import averaging, digest
from make_vectors import compressed_round, secure_round, sparse_graph
from p2pfed.net import wire

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "docs" / "vectors" / "protocol-vectors.json").read_text())


def _state(entries) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((e["name"], np.frombuffer(bytes.fromhex(e["hex"]), dtype=e["dtype"]).reshape(e["shape"]))
                       for e in entries)


def test_digest_layout_and_value():
    v = VECTORS["digest"]
    state = _state(v["state"])
    assert digest.layout(state).decode() == v["layout_utf8"]
    assert averaging.flatten(state).tobytes().hex() == v["flat_float32_hex"]
    assert digest.digest(state) == v["digest"]


def test_digest_of_a_model_of_two_chunks():
    w = (np.arange(300_000) % 1000).astype(np.float32) / np.float32(1000)
    state = OrderedDict([("w", w), ("n", np.array(7, dtype=np.int64))])
    assert digest.digest(state) == VECTORS["digest_two_chunks"]["digest"]


def test_three_member_round_shards_mean_and_digest():
    v = VECTORS["round"]
    inputs = [_state(s) for s in v["inputs"]]
    flats = [averaging.flatten(s) for s in inputs]
    bounds = averaging.shard_bounds(flats[0].size, len(v["members"]))
    assert [list(b) for b in bounds] == v["shard_bounds"]
    for (lo, hi), want in zip(bounds, v["reduced_shards_hex"]):
        assert averaging.weighted_mean([f[lo:hi] for f in flats], v["weights"]).tobytes().hex() == want
    result = _state(v["result"])
    src = inputs[v["members"].index(v["integer_buffers_from"])]
    ints = OrderedDict((k, a) for k, a in src.items() if not averaging.is_float(a))
    got = averaging.unflatten(np.concatenate([np.frombuffer(bytes.fromhex(h), "<f4") for h in v["reduced_shards_hex"]]),
                              ints, inputs[0])
    assert digest.digest(got) == digest.digest(result) == v["digest"]


def test_every_message_kind_encodes_to_the_vector_bytes_and_decodes_back():
    assert {f["kind"] for f in VECTORS["frames"]} == set(wire.KINDS)
    for f in VECTORS["frames"]:
        frames = [bytes.fromhex(h) for h in f["frames_hex"]]
        msg = wire.decode(frames, 1 << 20)
        assert msg.kind == f["kind"] and msg.sender == f["from"]
        assert {k: msg[k] for k in f["fields"]} == f["fields"]
        again = wire.encode(f["kind"], f["from"], msg.arrays, **f["fields"])
        assert [bytes(x).hex() for x in again] == f["frames_hex"], f["kind"]


def _hex32(h: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(h), "<f4")


def test_compressed_rounds_give_the_vector_bytes():
    """The codecs, the error feedback and the placed result of "Compressed shards", with and
    without carried errors, against the vectors."""
    v = VECTORS["compressed_rounds"]
    anchor = _state(v["anchor"])
    inputs = [_state(s) for s in VECTORS["round"]["inputs"]]
    for want in v["rounds"]:
        got = compressed_round(anchor, inputs, v["weights"], want["codec"],
                               [_hex32(h) for h in want["carried_member_errors_hex"]],
                               [_hex32(h) for h in want["carried_reducer_errors_hex"]])
        assert got == want, want["codec"]
        assert digest.digest(_state(want["result"])) == want["digest"]


def test_sample_target_shares_give_the_vector_batches():
    from p2pfed.learning import balance
    for case in VECTORS["shares"]:
        rates = {int(m): r for m, r in case["rates"].items()}
        got = balance.shares(rates, case["members"], case["batch_size"])
        assert {str(m): b for m, b in got.items()} == case["shares"]


def test_auto_steps_choices_give_the_vector_choices():
    from p2pfed.consensus import autosteps
    for case in VECTORS["auto_choices"]:
        got = autosteps.choose(case["exchange_s"], case["step_s"], case["k"], case["compression"])
        assert list(got) == case["choice"], case


def test_a_secure_round_gives_the_vector_keys_masks_sums_and_digest():
    """X25519 pair keys, HKDF, AES-256-CTR masks, fixed point and the 128-bit BatchNorm sums
    (bnsync and bnstats) of "Secure aggregation", against the vectors."""
    v = VECTORS["secure_round"]
    inputs = [_state(s) for s in VECTORS["round"]["inputs"]]
    got = secure_round(inputs, v["members"], v["weights"], v["round"], v["attempt"])
    assert got == {k: x for k, x in v.items() if k != "inputs"}
    exact = VECTORS["round"]["reduced_shards_hex"]
    for mine, plain in zip(v["reduced_shards_hex"], exact):     # within the bound of the plain round's mean
        assert np.max(np.abs(_hex32(mine).astype(np.float64) - _hex32(plain))) <= 3 * 2.0 ** -33 + 2.0 ** -23


def test_a_large_groups_mask_graph_is_the_vectors():
    v = VECTORS["sparse_graph"]
    assert sparse_graph(v["members"], v["round"], v["attempt"], v["degree"]) == v
    ring, half = v["ring"], v["degree"] // 2            # the neighbours follow from the ring by the rule
    for at, m in enumerate(ring):
        assert v["neighbours"][str(m)] == sorted(ring[(at + d) % len(ring)] for d in range(-half, half + 1) if d)
