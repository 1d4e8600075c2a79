"""The round's stages: the transition table, and a live round driven through a failed attempt, a
retry, a download and commits while an observer reads the peers' real heartbeats."""
import itertools
import os
import signal
import threading
import time

import pytest
import zmq

from helpers import add_faults, make_config, start_peer, wait_all
from p2pfed.net import wire
from p2pfed.outputs import metrics
from p2pfed.run.node.stages import RoundStage, StageError, StageMachine, TRANSITIONS


def test_every_stage_has_a_row_and_illegal_moves_raise():
    assert set(TRANSITIONS) == set(RoundStage)
    seen = []
    m = StageMachine(lambda stage, rnd: seen.append((rnd, stage)))
    for stage, rnd in [(RoundStage.TRAIN, 1), (RoundStage.WAIT, 1), (RoundStage.EXCHANGE, 1), (RoundStage.WAIT, 1),
                       (RoundStage.EXCHANGE, 1), (RoundStage.TRAIN, 2), (RoundStage.WAIT, 2), (RoundStage.SYNC, 2),
                       (RoundStage.TRAIN, 3)]:
        m.enter(stage, rnd)
    assert seen[0] == (0, RoundStage.START) and seen[-1] == (3, RoundStage.TRAIN) and len(seen) == 10
    m.enter(RoundStage.TRAIN, 3)                       # the stage I am in: no new record
    assert len(seen) == 10
    with pytest.raises(StageError, match="no transition from train to eval"):
        m.enter(RoundStage.EVAL, 3)                    # evaluation follows a commit, never training
    with pytest.raises(StageError):
        StageMachine().enter(RoundStage.QUANTIZE, 1)


class _Observer(threading.Thread):
    """Binds peer 3's address and records every heartbeat the real peers send it:
    (t, peer, round, phase)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.seen, self.stop = port, [], threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(f"tcp://127.0.0.1:{self.port}")
        try:
            while not self.stop.is_set():
                if s.poll(50):
                    msg = wire.decode(s.recv_multipart()[1:], 1 << 20)
                    if msg.kind == "hb":
                        self.seen.append((time.time(), msg.sender, msg["round"], msg["phase"]))
        finally:
            s.close(0)
            ctx.term()


def _stages(run, peer) -> list[tuple[float, int, str]]:
    return [(r["t"], r["round"], r["phase"]) for r in metrics.read(run / f"metrics-{peer}.jsonl") if r["type"] == "phase"]


def test_heartbeats_follow_the_round_through_failure_retry_download_and_commit(tmp_path, procs):
    """Peer 2 is held in round 3's exchange (a stall fault) and SIGSTOPped there, so it falls
    silent: peers 0 and 1 fail the attempt, wait for the next group, average without it and
    commit; peer 2 resumes, finds its attempt aborted and downloads the round. Peer 3 is this
    test: it listens to the real peers' heartbeats and never answers."""
    cfg, path = make_config(tmp_path, 4, train={"local_steps": 2, "local_epochs": 0.0, "max_steps": 0, "rounds": 40},
                            averaging={"min_peers": 2, "startup_timeout_s": 3.0, "ready_timeout_s": 1.0,
                                       "heartbeat_interval_s": 0.1, "dead_after_s": 1.0})
    add_faults(path, {"peer": 2, "round": 3, "phase": "exchange", "action": "stall", "stall_s": 3.0})
    run = tmp_path / "run"
    observer = _Observer(cfg.peer(3).port)
    observer.start()
    try:
        ps = [start_peer(procs, path, i) for i in range(3)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (3, "exchange") not in [(r, s) for _, r, s in _stages(run, 2)]:
            time.sleep(0.02)
        os.kill(ps[2].pid, signal.SIGSTOP)               # silent in the middle of its exchange
        time.sleep(2.5)
        os.kill(ps[2].pid, signal.SIGCONT)
        assert wait_all(ps, 60) == [0, 0, 0]
    finally:
        observer.stop.set()
        observer.join(5)
    # peer 0 in round 3: the attempt with peer 2 fails, peer 0 waits for the next group, then
    # exchanges again without it and commits; round 4 starts with training
    r3 = [s for _, r, s in _stages(run, 0) if r == 3]
    assert r3 == ["train", "wait", "exchange", "wait", "exchange"], r3
    assert [s for _, r, s in _stages(run, 0) if r == 4][0] == "train"
    # peer 2: its attempt was aborted meanwhile, the round was committed without it: it downloads
    stages2 = [(r, s) for _, r, s in _stages(run, 2)]
    r3 = [s for r, s in stages2 if r == 3]
    assert r3 == ["train", "wait", "exchange", "wait", "sync"], r3
    # then it trains the round after the one it adopted. While it downloaded, the others may have
    # committed more rounds (a loaded machine): then it downloads those too, newest last, first
    rest = stages2[stages2.index((3, "sync")) + 1:]
    syncs = [r for r, _ in itertools.takewhile(lambda rs: rs[1] == "sync", rest)]
    assert syncs == sorted(set(syncs)) and all(r > 3 for r in syncs), stages2
    after = rest[len(syncs)]
    assert after[1] == "train" and after[0] > max([3, *syncs]), stages2
    # every heartbeat said what its peer was doing when it left (within a heartbeat interval)
    seen = observer.seen
    for t, peer, rnd, phase in seen:
        stages = _stages(run, peer)
        window = [(r, s) for ts, r, s in stages if t - 0.5 <= ts <= t + 0.01]
        before = [(r, s) for ts, r, s in stages if ts < t - 0.5][-1:]
        assert (rnd, phase) in window + before, (peer, t, rnd, phase, window + before)
    assert len(seen) > 100 and {p for _, p, _, _ in seen} == {0, 1, 2}
    # while peer 2 was held in its exchange, its heartbeats said so (not "train", not "wait")
    assert sum(1 for _, p, r, ph in seen if (p, r, ph) == (2, 3, "exchange")) >= 3
