"""Sample-target rounds (train.round_target = "samples"): a round's images are shared out by
measured speed, every member is weighted by the images it processed, and a deadline stops a
member's local steps; the shares maths, the stream of varying batches, the options' errors,
and real peers with one slow peer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import add_faults, check_round_exact, make_config, round_records, start_peer, summary, wait_all

from p2pfed import config
from p2pfed.learning import augment, balance
from p2pfed.learning.datasets import Split
from p2pfed.outputs import metrics


def test_shares_add_up_to_the_round_total_in_proportion_to_speed():
    got = balance.shares({0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0, 4: 100 / 3}, [0, 1, 2, 3, 4], 32)
    assert sum(got.values()) == 5 * 32
    assert got[4] == 12 and all(got[m] in (37, 37, 37, 37) for m in range(4)), got     # 160 x 1/13 and 3/13
    assert balance.shares({}, [0, 1, 2], 32) == {0: 32, 1: 32, 2: 32}                  # nothing measured: equal
    # unmeasured or hostile rates count at the mean of the measured ones
    for bad in (None, float("nan"), float("inf"), -5.0, 0.0):
        assert balance.shares({0: 50.0, 1: 50.0, 2: bad}, [0, 1, 2], 10) == {0: 10, 1: 10, 2: 10}
    # ties of the remainder go to the lower id; the same input always gives the same shares
    assert balance.shares({0: 1.0, 1: 1.0, 2: 1.0}, [0, 1, 2], 1) == {0: 2, 1: 2, 2: 2}   # MIN_BATCH
    assert balance.shares({0: 1.0, 1: 1.0}, [0, 1], 3) == {0: 3, 1: 3}
    a = balance.shares({0: 3.0, 1: 2.0, 2: 2.0}, [0, 1, 2], 7)
    assert a == {0: 9, 1: 6, 2: 6} and sum(a.values()) == 21
    # a very slow member still gets MIN_BATCH images a step (BatchNorm needs 2)
    assert balance.shares({0: 1000.0, 1: 1.0}, [0, 1], 16)[1] == balance.MIN_BATCH
    assert balance.rate(0, 1.0) is None and balance.rate(10, 0.0) is None and balance.rate(10, math.nan) is None
    assert balance.rate(10, 2.0) == 5.0


def test_a_stream_of_varying_batches_sees_every_image_once_per_epoch():
    n = 50
    split = Split(np.arange(n), [str(i) for i in range(n)],          # each image its own label: its id
                  images=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous())
    s = augment.stream(split, 7, torch.Generator().manual_seed(0), False, None)
    seen = []
    for bs in (7, 3, 20, 2, 11, 9):          # the last batch holds the 7 left of the epoch
        s.batch_size = bs
        x, y = next(s)
        assert len(y) == min(bs, n - len(seen))
        seen += y.tolist()
    assert sorted(seen) == list(range(n))
    x, y = next(s)                           # the next epoch starts over, reshuffled
    assert len(y) == 9


@pytest.mark.parametrize("train, match", [
    ({"round_deadline_s": 2.0}, "train.round_deadline_s = 2.0 needs train.round_target"),
    ({"round_target": "samples", "round_deadline_s": -1.0}, "train.round_deadline_s = -1.0 must be >= 0"),
    ({"round_target": "samples", "round_deadline_s": float("nan")}, "train.round_deadline_s = nan must be >= 0"),
    ({"round_target": "samples", "round_deadline_s": float("inf")}, "train.round_deadline_s = inf"),
    ({"round_target": "samples", "batchnorm": "sync"}, "train.round_target = \"samples\" cannot be used with "
                                                       "train.batchnorm = \"sync\""),
])
def test_bad_round_target_options_name_the_key(train, match):
    with pytest.raises(config.ConfigError, match=match.replace("(", r"\(")):
        config.override(config.Config(), train=train)


def test_round_target_is_checked_when_read_from_toml(tmp_path):
    p = tmp_path / "peers.toml"
    p.write_text('[train]\nround_target = "fastest"\n')
    with pytest.raises(config.ConfigError, match="train.round_target"):
        config.load(p)


def test_one_slow_peer_gets_a_smaller_share_and_every_round_is_exact(tmp_path, procs):
    """3 peers, peer 2 at a third of its speed, rounds of 6 steps with a 0.4 s deadline: every
    round agrees and is the exact mean weighted by the images each member processed (its report
    and its ready agree); once speeds are measured the slow peer processes fewer images than each
    fast peer; and no member starts a step after the deadline."""
    deadline_s, k = 0.4, 6
    cfg, path = make_config(tmp_path, 3, train={"rounds": 7, "local_steps": k, "round_target": "samples",
                                                "round_deadline_s": deadline_s})
    add_faults(path, {"peer": 2, "round": 1, "phase": "train", "action": "slow", "slow_factor": 3.0})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    assert wait_all(ps, 240, run) == [0, 0, 0]
    s = summary(run)
    recs = {p: round_records(run, p) for p in range(3)}
    assert [r["round"] for r in s["rounds"]] == list(range(1, 8))
    for r in s["rounds"]:
        assert r["members"] == [0, 1, 2] and r["digests_agree"], r
        check_round_exact(run, r["round"], [0, 1, 2], [0, 1, 2])      # weights: the images in each dump
        for p in range(3):
            rec = recs[p][r["round"]]
            assert rec["weights"][rec["members"].index(p)] == rec["images"], (p, rec)
            assert r["weights"][str(p)] == rec["images"]
    later = [r for r in s["rounds"] if r["round"] >= 3]              # shares use reports of rounds <= r - 2
    for r in later:
        w = r["weights"]
        assert w["2"] < w["0"] and w["2"] < w["1"], w
    # total images per round: the target of 3 peers x k x batch_size, unless a deadline cut a round short
    assert all(sum(r["weights"].values()) <= 3 * k * 32 for r in s["rounds"])
    # no step starts after the deadline: the last step of a round starts when the one before it ends
    for p in range(3):
        started: dict[int, float] = {}
        ends: dict[int, list[float]] = {}
        for rec in metrics.read(run / f"metrics-{p}.jsonl"):
            if rec["type"] == "phase" and rec["phase"] == "train":
                started.setdefault(rec["round"], rec["t"])
            elif rec["type"] == "step":
                ends.setdefault(rec["round"], []).append(rec["t"])
        for rnd, t in ends.items():
            last_start = t[-2] if len(t) > 1 else started[rnd]
            assert last_start - started[rnd] <= deadline_s + 0.05, (p, rnd, last_start - started[rnd])
    cut = [rnd for rnd, t in ends.items() if len(t) < k]          # the slow peer (p = 2) hit the deadline
    assert cut, "the slow peer never reached the deadline; the test did not test it"
