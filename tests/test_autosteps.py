"""train.auto_steps: the choice of local steps (and compression) from agreed measured costs,
made the same way by every member and learned from the round state by a peer that comes back."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import add_faults, check_round_exact, make_config, peer_log, start_peer, summary, wait_all

from p2pfed import config
from p2pfed.consensus import autosteps
from p2pfed.learning import schedule
from p2pfed.outputs import metrics
from p2pfed.run.node.faults import CRASH_EXIT_CODE


def test_local_steps_auto_is_the_default_steps_with_auto_steps_on(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[train]\nlocal_steps = "auto"\n')
    t = config.load(path).train
    assert t.auto_steps and t.local_steps == config.TrainConfig().local_steps and t.local_epochs == 0.0
    t = config.override(config.from_dict({"train": {"local_epochs": 0.5}}), train={"local_steps": "auto"}).train
    assert t.auto_steps and t.local_steps == config.TrainConfig().local_steps and t.local_epochs == 0.0
    for table, words in [({"local_steps": "auto", "auto_steps": False}, "auto_steps = false"),
                         ({"local_steps": "auto", "local_epochs": 0.5}, "local_epochs = 0.5"),
                         ({"local_steps": "fast"}, "'fast'")]:
        with pytest.raises(config.ConfigError, match="train.local_steps") as e:
            config.from_dict({"train": table})
        assert words in str(e.value)


def test_choose_aims_at_a_fifth_of_the_round_for_the_exchange():
    # rho = exchange / (k x step); m is the smallest power of two with rho / m <= 1/4
    assert autosteps.choose(0.01, 0.1, 1, "none") == (1, False)       # rho 0.1: the exchange is cheap
    assert autosteps.choose(0.1, 0.1, 1, "none") == (4, False)        # rho 1: m 4
    assert autosteps.choose(0.1, 0.1, 4, "none") == (1, False)        # the same costs at k = 4: rho 0.25
    assert autosteps.choose(0.2, 0.1, 1, "none") == (4, True)         # rho 2 > 1: int8, then 1 -> m 4
    assert autosteps.choose(0.12, 0.1, 1, "int8") == (4, False)       # compression already on; rho 1.2 -> 4
    assert autosteps.choose(0.3, 0.1, 1, "int8") == (autosteps.MAX_MULTIPLIER, False)   # rho 3 wants 16: capped
    assert autosteps.choose(100.0, 0.1, 1, "none") == (autosteps.MAX_MULTIPLIER, True)
    for bad in ((math.nan, 0.1), (0.1, math.inf), (0.1, 0.0), (0.0, 0.1), (-1.0, 0.1)):
        assert autosteps.choose(*bad, 1, "none") == (1, False)


def test_the_choice_comes_from_the_agreed_state_and_survives_a_compressed_mean():
    cost = {autosteps.COST: np.array([0.1, 0.1], np.float32), autosteps.CHOICE: np.zeros(2, np.float32)}
    assert autosteps.decided(cost, autosteps.DECIDE_ROUND - 1, 1, "none") is None
    assert autosteps.decided(cost, autosteps.DECIDE_ROUND, 1, "none") == (4, False)
    later = {autosteps.COST: np.array([9.0, 0.001], np.float32),           # later costs do not matter
             autosteps.CHOICE: np.array([3.9999, 1.00002], np.float32)}     # an int8 mean's rounding
    assert autosteps.decided(later, autosteps.DECIDE_ROUND + 3, 1, "none") == (4, True)
    assert autosteps.decided({**later, autosteps.CHOICE: np.zeros(2, np.float32)}, 9, 1, "none") is None
    assert autosteps.decided({**later, autosteps.CHOICE: np.array([np.nan, 0], np.float32)}, 9, 1, "none") is None
    assert autosteps.decided({**later, autosteps.CHOICE: np.array([1e9, 0], np.float32)}, 9, 1,
                             "none")[0] == autosteps.MAX_MULTIPLIER


def test_merged_plans_keep_every_step_and_the_head():
    plan = schedule.Plan((1,) * 4 + (2,) * 7, 10)
    m = schedule.merged(plan, 4, 4)
    assert m.steps == (1, 1, 1, 1, 8, 6) and m.total_steps == plan.total_steps
    assert schedule.merged(plan, 4, 1) == plan
    assert schedule.merged(plan, 20, 4) == plan


def _steps_per_round(run, peer) -> dict[int, int]:
    return {r["round"]: r["steps"] for r in metrics.read(run / f"metrics-{peer}.jsonl") if r["type"] == "step"}


def test_every_member_picks_the_same_steps_and_a_restarted_peer_follows_the_choice(tmp_path, procs):
    """3 peers, 200 rounds of 1 step of 2 images (cheap steps: the exchange dominates, so the
    choice merges rounds), auto_steps on, min_peers = 3 (the others wait for the restart): every
    member logs the same choice after round 4 and takes the same steps in every round, the rounds
    after it hold m steps each, every step of the plan is taken, and every round's digests agree.
    Peer 2 crashes in round 6 and restarts without a checkpoint: it learns the choice from the
    state of round 5 it downloads and takes the same steps as the others from then on."""
    cfg, path = make_config(tmp_path, 3, train={"rounds": 200, "local_steps": 1, "batch_size": 2, "eval_every": 1000,
                                                "auto_steps": True},
                            averaging={"min_peers": 3})
    add_faults(path, {"peer": 2, "round": 6, "phase": "train"})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    assert ps[2].wait(timeout=180) == CRASH_EXIT_CODE
    again = start_peer(procs, path, 2, "--resume")
    assert wait_all(ps[:2] + [again], 300, run) == [0, 0, 0]
    chosen = []
    for p in range(3):
        lines = [ln for ln in peer_log(run, p).splitlines() if "train.auto_steps chose" in ln]
        assert lines, f"peer {p} logged no choice"
        chosen.append(lines[-1].split("chose ", 1)[1])
    assert len(set(chosen)) == 1, chosen                      # the same choice on every member
    m = int(chosen[0].split("x ")[1].split()[0])
    assert m > 1, f"steps of 2 images should make the exchange dominate; the choice was {chosen[0]}"
    expected = schedule.merged(schedule.Plan((1,) * 200, 1), autosteps.DECIDE_ROUND, m).steps
    s = summary(run)
    assert [r["round"] for r in s["rounds"]] == list(range(1, len(expected) + 1))
    assert all(r["digests_agree"] and r["members"] == [0, 1, 2] for r in s["rounds"])   # min_peers = 3
    steps = [_steps_per_round(run, p) for p in range(3)]
    assert steps[0] == steps[1] == {r: k for r, k in enumerate(expected, start=1)}, steps[:2]
    assert all(steps[2][r] == expected[r - 1] for r in steps[2]), steps[2]
    assert any("synced round 5" in r.get("message", "") for r in metrics.read(run / "metrics-2.jsonl"))
    check_round_exact(run, 3, [0, 1, 2], [0, 1, 2])           # float32 rounds before the choice are exact
