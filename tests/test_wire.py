from collections import OrderedDict

import msgpack
import numpy as np
import pytest

from p2pfed.net import wire

LIMIT = 1 << 20


def test_round_trip_with_scalar_and_matrix():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, dtype=np.int64)]
    frames = wire.encode("model", 3, arrays, round=2, digest="ab", names=["a", "b"], members=[1, 3])
    msg = wire.decode([bytes(f) for f in frames], LIMIT)
    assert msg.kind == "model" and msg.sender == 3 and msg["round"] == 2
    np.testing.assert_array_equal(msg.arrays[0], arrays[0])
    assert msg.arrays[1].shape == () and msg.arrays[1] == 7


@pytest.mark.parametrize("frames,reason", [
    ([b"\xc1\xff garbage"], "not valid msgpack"),
    ([msgpack.packb({"v": 1, "kind": "ready", "from": 1, "round": 1})[:-3]], "not valid msgpack"),
    ([msgpack.packb([1, 2])], "not a map"),
    ([msgpack.packb({"v": 9, "kind": "ready", "from": 1})], "protocol version"),
    ([msgpack.packb({"v": 1, "kind": "exec", "from": 1})], "unknown message kind"),
    ([msgpack.packb({"v": 1, "kind": "ready", "from": 1, "round": 1})], "lacks field 'n_samples'"),
    ([msgpack.packb({"v": 1, "kind": "ready", "from": 1, "round": "1", "n_samples": 3})], "round must be int"),
    ([msgpack.packb({"v": 1, "kind": "part", "from": 1, "round": 1, "attempt": 1, "shard": 0, "members": [0, 1],
                     "arrays": [["<f4", [4]]]}), b"\x00" * 15], "needs 16 bytes"),
    ([msgpack.packb({"v": 1, "kind": "part", "from": 1, "round": 1, "attempt": 1, "shard": 0, "members": [0, 1],
                     "arrays": [["O", [1]]]}), b"\x00" * 8], "not allowed"),
    ([msgpack.packb({"v": 1, "kind": "part", "from": 1, "round": 1, "attempt": 1, "shard": 0, "members": [0, 1],
                     "arrays": [["<f4", [1]]]})], "1 arrays but 0 buffers"),
    ([msgpack.packb({"v": 1, "kind": "part", "from": 1, "round": 1, "attempt": 1, "shard": 0, "members": [0, 1],
                     "arrays": [["<f4", [2]]]}), np.array([1, np.nan], np.float32).tobytes()], "NaN or Inf"),
    ([b"x" * 10, b"y" * (LIMIT)], "exceeds the limit"),
])
def test_decode_rejects_with_reason(frames, reason):
    with pytest.raises(wire.WireError, match=reason):
        wire.decode(frames, LIMIT)


def test_inf_is_rejected():
    frames = wire.encode("part", 1, [np.array([np.inf], np.float32)], round=1, attempt=1, shard=0,
                         members=[0, 1])
    with pytest.raises(wire.WireError, match="NaN or Inf"):
        wire.decode([bytes(f) for f in frames], LIMIT)


def test_check_state_against_local_schema():
    like = OrderedDict([("a", np.zeros((2, 2), np.float32)), ("n", np.array(0, np.int64))])
    good = [np.ones((2, 2), np.float32), np.array(3, np.int64)]
    assert list(wire.check_state(["a", "n"], good, like)) == ["a", "n"]
    with pytest.raises(wire.WireError, match="names differ"):
        wire.check_state(["a", "m"], good, like)
    with pytest.raises(wire.WireError, match="tensor a is float32\\[4\\]"):
        wire.check_state(["a", "n"], [np.ones(4, np.float32), good[1]], like)
    with pytest.raises(wire.WireError, match="tensor a is float64"):
        wire.check_state(["a", "n"], [np.ones((2, 2), np.float64), good[1]], like)


def test_random_bytes_never_escape_as_other_exceptions():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(1, 4))
        frames = [rng.bytes(int(rng.integers(0, 200))) for _ in range(n)]
        try:
            wire.decode(frames, LIMIT)
        except wire.WireError:
            pass


def test_check_ints_rejects_missing_buffers():
    like = OrderedDict([("a", np.zeros(2, np.float32)), ("n", np.array(0, np.int64)), ("m", np.array(0, np.int64))])
    assert set(wire.check_ints(["n", "m"], [np.array(1, np.int64), np.array(2, np.int64)], like)) == {"n", "m"}
    with pytest.raises(wire.WireError, match="1 integer buffers for 2 names"):
        wire.check_ints(["n", "m"], [np.array(1, np.int64)], like)
    with pytest.raises(wire.WireError, match="names differ"):
        wire.check_ints(["m", "n"], [np.array(1, np.int64)] * 2, like)


def test_messages_naming_ids_that_are_not_peers_are_rejected():
    like = OrderedDict([("w", np.zeros(3, np.float32))])
    ids = {0, 1, 2}
    for kind, fields in [("group", dict(round=2, attempt=1, members=[0, 7], weights=[1, 1])),
                         ("commit", dict(round=2, digest="0" * 64, members=[1, 99])),
                         ("abort", dict(round=2, attempt=1, reason="x", dead=[5]))]:
        msg = wire.decode(wire.encode(kind, 1, **fields), 1 << 20)
        wire.check_schema(msg, like, 3)                       # well-formed without the config's ids
        with pytest.raises(wire.WireError, match="are not peers of the config"):
            wire.check_schema(msg, like, 3, ids)


@pytest.mark.parametrize("field,value", [("round", -1), ("attempt", -5), ("shard", 2**63), ("from", -1)])
def test_int_fields_out_of_range_are_rejected(field, value):
    fields = dict(round=1, attempt=1, shard=0, members=[0, 1])
    sender = 1
    if field == "from":
        sender = value
    else:
        fields[field] = value
    frames = wire.encode("part", sender, [np.zeros(2, np.float32)], **fields)
    with pytest.raises(wire.WireError, match="out of range"):
        wire.decode([bytes(f) for f in frames], LIMIT)
