"""Structural fuzzing of the wire format: no frame, however built, raises anything but WireError,
and no frame ends a live transport's network thread."""
import logging
import time
from collections import OrderedDict

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfed import config
from p2pfed.net import wire
from p2pfed.run.launch.preflight import free_ports
from p2pfed.net.netthread import NetworkThread
from p2pfed.net.transport import Transport, TransportDown

LIMIT = 1 << 20
LIKE = OrderedDict([("a.weight", np.zeros((2, 3), np.float32)), ("a.bias", np.zeros(3, np.float32)),
                    ("bn.num_batches_tracked", np.zeros((), np.int64))])
N_FLOATS = 9

# every msgpack-encodable kind of value, with the extremes of each
extreme_ints = st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**63 - 1, -2**63, 2**64 - 1])
scalars = st.one_of(st.none(), st.booleans(), extreme_ints, st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
dtypes = st.one_of(st.sampled_from(sorted(wire.ALLOWED_DTYPES)), st.sampled_from(["O", "<U4", "V8", "<c8", "", "f4"]),
                   values)
dims = st.lists(st.one_of(st.integers(0, 4), st.sampled_from([2**30, 2**31 - 1, 2**31, 2**63 - 1, -1]),
                          st.booleans(), st.floats(0, 4)), max_size=10)
specs = st.one_of(st.tuples(dtypes, dims).map(list), values)


@st.composite
def frames(draw):
    kind = draw(st.one_of(st.sampled_from(sorted(wire.KINDS)), st.text(max_size=8), values))
    fields = wire.KINDS.get(kind, {}) if isinstance(kind, str) else {}
    header = {"v": draw(st.one_of(st.just(1), values)), "kind": kind,
              "from": draw(st.one_of(st.just(1), values))}
    for name, typ in fields.items():
        # mostly the right type (so deeper checks run), sometimes anything at all, sometimes absent
        right = {int: st.one_of(st.integers(-2, 5), extreme_ints), str: st.text(max_size=70),
                 list: st.lists(st.one_of(st.integers(-1, 5), values), max_size=6),
                 dict: st.dictionaries(st.text(max_size=8), values, max_size=4)}[typ]
        choice = draw(st.sampled_from(["right", "right", "any", "absent"]))
        if choice != "absent":
            header[name] = draw(right if choice == "right" else values)
    arrays = draw(st.lists(specs, max_size=4))
    header["arrays"] = arrays
    out = [msgpack.packb(header, use_bin_type=True)]
    for spec in arrays:       # buffers: the right length where computable, else random; sometimes missing
        try:
            n = int(np.prod(spec[1])) * np.dtype(spec[0]).itemsize
            n = n if 0 <= n <= 4096 else draw(st.integers(0, 64))
        except Exception:
            n = draw(st.integers(0, 64))
        n = draw(st.sampled_from([n, n, max(0, n - 1), n + 1]))
        out.append(draw(st.binary(min_size=n, max_size=n)) if n <= 256 else bytes(n))
    if draw(st.booleans()) and len(out) > 1:
        out = out[:-1]
    return out


def _decode_and_check(fs):
    try:
        msg = wire.decode(fs, LIMIT)
    except wire.WireError:
        return
    try:
        wire.check_schema(msg, LIKE, N_FLOATS)
    except wire.WireError:
        pass


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames())
def test_structured_frames_raise_only_wire_error(fs):
    _decode_and_check(fs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_random_bytes_raise_only_wire_error(fs):
    _decode_and_check(fs)


def test_overflowing_dims_are_rejected_not_crashing():
    # 4 dims of 2^30: the element count wraps to 0 in int64 arithmetic, which an empty buffer
    # then matched; reshape raised ValueError and ended the network thread
    h = msgpack.packb({"v": 1, "kind": "part", "from": 1, "round": 1, "attempt": 1, "shard": 0, "members": [0, 1],
                       "arrays": [["<f4", [2**30] * 4]]})
    with pytest.raises(wire.WireError, match="needs 5316911983139663491615228241121378304 bytes"):
        wire.decode([h, b""], LIMIT)
    # unhashable members used to raise TypeError in the main thread's schema check
    g = wire.decode([msgpack.packb({"v": 1, "kind": "group", "from": 1, "round": 1, "attempt": 1,
                                    "members": [{}], "weights": [1]})], LIMIT)
    with pytest.raises(wire.WireError):
        wire.check_schema(g, LIKE, N_FLOATS)


def _pair():
    ports = free_ports(2)
    peers = config.local_peers(2, ports)
    t = Transport(peers[0], peers, max_message_bytes=LIMIT, heartbeat_interval_s=0.1)
    t.start()
    return t, peers


def test_live_transport_survives_hostile_frames_and_counts_them():
    t, peers = _pair()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, b"1")          # a listed peer id
        s.connect(f"tcp://127.0.0.1:{peers[0].port}")
        time.sleep(0.3)
        bad = msgpack.packb({"v": 1, "kind": "part", "from": 1, "round": 1, "attempt": 1, "shard": 0,
                             "members": [0, 1], "arrays": [["<f4", [2**30] * 4]]})
        for _ in range(200):
            s.send_multipart([bad, b""])
        s.send_multipart(wire.encode("ready", 1, round=1, n_samples=5, recipe=""))
        msg = t.recv(5.0)
        assert msg is not None and msg.kind == "ready"      # still receiving after 200 hostile frames
        assert t._thread.is_alive() and t.failed is None
        assert t.rejected >= 200
    finally:
        s.close(linger=0)
        ctx.term()
        t.close()


def test_an_internal_error_on_one_frame_is_a_rejected_frame_that_names_the_sender(caplog):
    t, peers = _pair()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    calls = []

    heard = t.shared.heard

    def broken(msg):
        calls.append(msg.kind)
        if len(calls) == 1:
            raise KeyError("injected")
        return heard(msg)

    t.shared.heard = broken
    try:
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, b"1")
        s.connect(f"tcp://127.0.0.1:{peers[0].port}")
        time.sleep(0.3)
        with caplog.at_level(logging.WARNING):
            s.send_multipart(wire.encode("ready", 1, round=1, n_samples=5, recipe=""))
            s.send_multipart(wire.encode("ready", 1, round=2, n_samples=5, recipe=""))
            msg = t.recv(5.0)
        assert msg is not None and msg["round"] == 2        # the first frame was dropped, the second delivered
        assert t.rejected == 1 and t._thread.is_alive() and t.failed is None
        assert "rejected frame from peer 1: internal error handling a frame: KeyError" in caplog.text
    finally:
        s.close(linger=0)
        ctx.term()
        t.close()


def test_a_dead_network_thread_makes_recv_and_send_fail_fast(monkeypatch):
    def boom(self):
        raise RuntimeError("injected")
    monkeypatch.setattr(NetworkThread, "_loop", boom)
    t, _ = _pair()
    try:
        t0 = time.monotonic()
        with pytest.raises(TransportDown, match="network thread died .*injected"):
            t.recv(30.0)
        assert time.monotonic() - t0 < 3.0
        with pytest.raises(TransportDown):
            t.send(1, wire.encode("ready", 0, round=1, n_samples=1, recipe=""))
    finally:
        t.close()
