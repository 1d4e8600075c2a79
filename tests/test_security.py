"""Hostile input against live peers: 1,000+ malformed frames, and CURVE with an unlisted key."""
import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from helpers import check_round_exact, make_config, start_peer, summary, wait_all
from p2pfed import config
from p2pfed.net import wire


def _wait_for_round(run: Path, peer: int, rnd: int, timeout_s: float = 120) -> None:
    from p2pfed.outputs import metrics
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(r["type"] == "step" and r["round"] == rnd for r in metrics.read(run / f"metrics-{peer}.jsonl")):
            return
        time.sleep(0.05)
    raise AssertionError(f"peer {peer} never reached round {rnd}")


@contextlib.contextmanager
def _dealers(pairs, linger_ms: int = 0):
    """DEALER sockets, one per (routing id, peer spec) pair, connected to that peer; all closed
    and the context ended on exit, after at most linger_ms for what is still queued."""
    ctx = zmq.Context()
    socks = []
    try:
        for ident, target in pairs:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, linger_ms)
            s.setsockopt(zmq.ROUTING_ID, ident)
            s.connect(f"tcp://{target.host}:{target.port}")
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close(linger=linger_ms)
        ctx.term()


def _hdr(kind, sender=3, **f):
    return msgpack.packb({"v": 1, "kind": kind, "from": sender, **f})


def malformed_frames(rng, n_floats: int, max_bytes: int):
    """(label, frames) pairs: random and structured garbage, every one of which must be rejected."""
    out = []
    for _ in range(1200):
        out.append(("random", [rng.bytes(int(rng.integers(0, 300))) for _ in range(int(rng.integers(1, 4)))]))
    for _ in range(400):
        h = _hdr("ready", round=2, n_samples=10, recipe="")
        out.append(("truncated", [h[:int(rng.integers(1, len(h)))]]))
    for _ in range(50):
        out.append(("names", wire.encode("model", 3, [np.zeros(3, np.float32)], round=5, digest="0" * 64,
                                         names=["evil.weight"], members=[3])))
    for _ in range(50):
        out.append(("dtype", [_hdr("part", round=2, attempt=1, shard=0, members=[3], arrays=[["<f8", [4]]]), b"\0" * 32]))
    for _ in range(50):
        out.append(("shape", [_hdr("part", round=2, attempt=1, shard=0, members=[3], arrays=[["<f4", [2, 2]]]), b"\0" * 16]))
    for _ in range(50):
        out.append(("length", [_hdr("part", round=2, attempt=1, shard=0, members=[3], arrays=[["<f4", [n_floats + 1]]]),
                               b"\0" * 4 * (n_floats + 1)]))
    for v in [np.nan, np.inf, -np.inf] * 34:
        out.append(("nonfinite", wire.encode("part", 3, [np.array([1.0, v], np.float32)], round=2, attempt=1,
                                             shard=0, members=[3])))
    for _ in range(600):
        out.append(("impostor", wire.encode("ready", int(rng.choice([0, 1, 2])), round=2, n_samples=10 ** 6, recipe="")))
    for _ in range(300):
        out.append(("stale", wire.encode("group", 3, round=1, attempt=99, members=[3], weights=[1])))
    for _ in range(50):
        out.append(("range", [_hdr("ready", round=-1, n_samples=10, recipe="")]))
        out.append(("range", [_hdr("part", round=2, attempt=1, shard=2**64 - 1, members=[3], arrays=[])]))
    for _ in range(200):
        out.append(("fields", [_hdr("group", round=2, attempt="1", members=[0], weights=[1])]))
    # last: ZeroMQ drops the connection for an oversized message, and what was queued behind it
    out.append(("oversized", [_hdr("part", round=2, attempt=1, shard=0, members=[3], arrays=[["<f4", [max_bytes // 4 + 10]]]),
                              b"\0" * 4 * (max_bytes // 4 + 10)]))
    return out


# what peer 0's log must say about the frames before the oversized one (its "connection closed" comes last)
REASONS = ["not valid msgpack", "is not in the config", "routing id is not a peer id", "tensor names differ",
           "expected float32", "NaN or Inf", "claims to be from peer", "dropped stale group",
           "attempt must be int", "out of range"]
FUZZ_RUN = dict(train={"rounds": 3, "max_steps": 25, "local_epochs": 4.0},
                averaging={"startup_timeout_s": 4.0, "ready_timeout_s": 8.0})


def test_fuzz_live_peer_keeps_running_and_consensus_is_exact(tmp_path, procs):
    # four peers in the config, three started: the fuzzer speaks as the absent peer 3
    (tmp_path / "twin").mkdir()
    twin_cfg, twin_path = make_config(tmp_path / "twin", 4, **FUZZ_RUN)     # the same run, unfuzzed
    twins = [start_peer(procs, twin_path, i) for i in range(3)]
    assert wait_all(twins, 240) == [0, 0, 0]
    # debug: routine drops (a stale group) and closed links are logged too, so every reason shows
    cfg, path = make_config(tmp_path, 4, **FUZZ_RUN, output={"dump_round_models": True, "log_level": "debug"})
    run = tmp_path / "run"
    target = cfg.peer(0)
    # the frames are made before the run starts: the peer must still be in round 2 when they come
    rng = np.random.default_rng(0)
    from p2pfed.consensus import averaging
    from p2pfed.learning import model
    state = {k: v.numpy() for k, v in model.build(cfg.model).state_dict().items()}
    n_floats = averaging.flatten(state).size            # "length" frames carry one float too many
    max_bytes = int(sum(a.nbytes for a in state.values()) * 1.25) + (1 << 20) + 1000   # over the peer's limit
    frames = malformed_frames(rng, n_floats, max_bytes)
    assert len(frames) >= 3000
    ps = [start_peer(procs, path, i) for i in range(3)]
    _wait_for_round(run, 0, 2)
    # the oversized frame goes last, and only once the peer has logged every other reason: ZeroMQ
    # drops the connection when its reader reaches that frame, and with it whatever it had queued
    # and the peer had not read yet (on a loaded machine, hundreds of frames)
    *rest, (_, oversized) = frames

    def wait_for_log(reasons, timeout_s=120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and ps[0].poll() is None:
            if all(reason in (run / "peer-0.log").read_text() for reason in reasons):
                return
            time.sleep(0.2)

    with _dealers([(ident, target) for ident in (b"3", b"99", b"\xff\x00")], linger_ms=10_000) as socks:
        time.sleep(0.3)
        for i, (label, f) in enumerate(rest):
            sock = socks[0] if i % 10 else socks[1 + (i // 10) % 2]
            sock.send_multipart(f, copy=True)
        wait_for_log(REASONS)
        socks[0].send_multipart(oversized, copy=True)
        wait_for_log(["connection closed"], timeout_s=30)
    assert wait_all(ps, 240) == [0, 0, 0]
    s = summary(run)
    assert [r["members"] for r in s["rounds"]] == [[0, 1, 2]] * 3
    for r in s["rounds"]:
        check_round_exact(run, r["round"], r["members"], r["members"])
    # runs are deterministic, and thousands of hostile frames changed nothing: the same final model
    twin = summary(tmp_path / "twin" / "run")
    assert [r["digests"]["0"] for r in twin["rounds"]] == [r["digests"]["0"] for r in s["rounds"]]
    assert twin["final"]["digest"] == s["final"]["digest"]
    text = (run / "peer-0.log").read_text()
    for reason in REASONS + ["connection closed"]:
        assert reason in text, f"no log line saying {reason!r}"


def _keygen(tmp: Path, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "p2pfed", "keygen", "--out", str(tmp / "keys"), "--name", name],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return re.search(r'public_key = "(.+)"', out).group(1)


def test_curve_unlisted_key_is_refused_while_listed_peers_agree(tmp_path, procs):
    cfg, path = make_config(tmp_path, 3, train={"rounds": 3, "max_steps": 25, "local_epochs": 4.0})
    keys = {i: _keygen(tmp_path, f"peer-{i}") for i in range(3)}
    peers = tuple(config.PeerSpec(id=p.id, host=p.host, port=p.port, public_key=keys[p.id]) for p in cfg.peers)
    raw = config.to_dict(cfg)
    raw["peers"] = [dict(p.__dict__) for p in peers]
    raw["security"] = {"curve": True, "secret_key_file": str(tmp_path / "keys" / "peer-{id}.key_secret")}
    cfg = config.from_dict(raw)
    path.write_text(config.dumps_toml(cfg))
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    _wait_for_round(run, 0, 1)
    import zmq.auth
    pub, sec = zmq.auth.create_certificates(str(tmp_path / "keys"), "intruder")
    ipub, isec = zmq.auth.load_certificate(sec)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, b"1")              # pretends to be a listed peer
    s.curve_publickey, s.curve_secretkey = ipub, isec
    s.curve_serverkey = keys[0].encode()
    s.connect(f"tcp://{cfg.peer(0).host}:{cfg.peer(0).port}")
    plain = ctx.socket(zmq.DEALER)                 # and one without any encryption at all
    plain.setsockopt(zmq.LINGER, 0)
    plain.setsockopt(zmq.ROUTING_ID, b"2")
    plain.connect(f"tcp://{cfg.peer(0).host}:{cfg.peer(0).port}")
    try:
        for _ in range(50):
            for sock in (s, plain):
                try:
                    sock.send_multipart(wire.encode("ready", 1, round=2, n_samples=10 ** 6, recipe=""), zmq.NOBLOCK)
                except zmq.Again:
                    pass
            time.sleep(0.05)
    finally:
        s.close(linger=0)
        plain.close(linger=0)
        ctx.term()
    assert wait_all(ps, 240) == [0, 0, 0]
    summ = summary(run)
    assert [r["members"] for r in summ["rounds"]] == [[0, 1, 2]] * 3
    for r in summ["rounds"]:
        assert r["weights"] == {"0": 334, "1": 333, "2": 333}   # the intruder's 10**6 never counted
        check_round_exact(run, r["round"], r["members"], r["members"])
    text = (run / "peer-0.log").read_text()
    assert "refused a connection with unlisted key" in text
    assert "rejected frame" not in text            # not a single intruder frame reached validation


def test_a_listed_peer_lying_about_its_progress_does_not_stop_the_others(tmp_path, procs):
    # four peers in the config, three started; peer 3's key is "stolen": it heartbeats claims to have
    # committed rounds it never did (first one far beyond the run, then its last round) and serves no model
    cfg, path = make_config(tmp_path, 4, train={"rounds": 6, "max_steps": 10, "local_epochs": 4.0},
                            averaging={"startup_timeout_s": 4.0, "ready_timeout_s": 2.0, "fetch_timeout_s": 4.0})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    _wait_for_round(run, 0, 1)

    def logs() -> str:
        return "".join((run / f"peer-{i}.log").read_text() for i in range(3))

    with _dealers([(b"3", cfg.peer(i)) for i in range(3)]) as socks:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and any(p.poll() is None for p in ps):
            # beyond the run's 6 rounds until a peer has said it ignores that; then a plausible claim
            claim = 10 ** 9 if "but the run has 6 rounds; ignored" not in logs() else 6
            for s in socks:
                s.send_multipart(wire.encode("hb", 3, round=claim, phase="train", committed=claim), copy=True)
            time.sleep(0.2)
    assert wait_all(ps, 60) == [0, 0, 0]
    s = summary(run)
    assert [r["members"] for r in s["rounds"]] == [[0, 1, 2]] * 6 and all(r["digests_agree"] for r in s["rounds"])
    assert "peer 3 claimed to have committed round" in logs() and "ignoring its claims from now on" in logs()


def test_sigterm_ends_a_training_peer_within_seconds(tmp_path, procs):
    import signal
    cfg, path = make_config(tmp_path, 2, train={"rounds": 50, "max_steps": 200, "local_epochs": 4.0})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(2)]
    _wait_for_round(run, 0, 1)
    t0 = time.monotonic()
    for p in ps:
        p.send_signal(signal.SIGTERM)
    assert wait_all(ps, 15) == [143, 143]
    assert time.monotonic() - t0 < 15
