"""A clean start: peers that finish setting up seconds apart lose no attempt, and a quiet log."""
import time

from helpers import make_config, peer_log, start_peer, summary, wait_all


def test_peers_that_start_seconds_apart_lose_no_attempt(tmp_path, procs):
    # each peer comes up 1.5 s after the one before: the first ones' outbound links to the last
    # ones are not up when they first say ready. Before the ready was re-sent, round 1 waited out
    # the whole exchange_timeout_s for parts that never came. (60 s: a slow machine's whole run,
    # 7.5 s of staggered starts included, must stay below it.)
    cfg, path = make_config(tmp_path, 5, train={"local_steps": 1, "local_epochs": 0.0, "max_steps": 0, "rounds": 6},
                            averaging={"exchange_timeout_s": 60.0})
    run = tmp_path / "run"
    started = time.monotonic()
    ps = []
    for i in range(5):
        ps.append(start_peer(procs, path, i))
        time.sleep(1.5)
    assert wait_all(ps, 120) == [0] * 5
    elapsed = time.monotonic() - started
    s = summary(run)
    assert [r["round"] for r in s["rounds"]] == list(range(1, 7))
    for r in s["rounds"]:
        assert r["attempts"] == 1 and not r["events"] and r["members"] == [0, 1, 2, 3, 4], r
    assert elapsed < cfg.averaging.exchange_timeout_s, elapsed       # no attempt waited out its deadline
    for p in range(5):
        log = peer_log(run, p)
        assert "failed" not in log and "dropped" not in log, log
        # INFO tells the story: start, each evaluation, the end; routine messages stay at DEBUG
        assert len([ln for ln in log.splitlines() if " INFO " in ln]) <= 4, log
