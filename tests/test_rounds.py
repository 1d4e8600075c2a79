"""Rounds of a few local steps with real peer processes: agreement every round, exactness,
cadences of evaluation and checkpoints, faults and restarts at small k."""
import pytest

from helpers import add_faults, check_round_exact, make_config, round_records, start_peer, summary, wait_all
from p2pfed.outputs import metrics
from p2pfed.run.node.faults import CRASH_EXIT_CODE

STEPS = {"local_steps": 2, "local_epochs": 0.0, "max_steps": 0}


def _records(run, peer, kind):
    return [r for r in metrics.read(run / f"metrics-{peer}.jsonl") if r["type"] == kind]


def test_thirty_rounds_of_two_steps_agree_exactly_with_eval_and_checkpoints_at_their_cadence(tmp_path, procs):
    cfg, path = make_config(tmp_path, 5, train={**STEPS, "rounds": 30, "eval_every": 10},
                            output={"checkpoint_every": 15})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(5)]
    assert wait_all(ps, 240) == [0] * 5

    s = summary(run)
    assert [r["round"] for r in s["rounds"]] == list(range(1, 31))
    for r in s["rounds"]:
        assert r["members"] == [0, 1, 2, 3, 4] and r["digests_agree"] and len(r["digests"]) == 5, r
    for rnd in (1, 17, 30):
        check_round_exact(run, rnd, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    for p in range(5):
        steps = _records(run, p, "step")
        assert len(steps) == 60 and {r["steps"] for r in steps} == {2}
        assert [r["round"] for r in _records(run, p, "phase") if r["phase"] == "eval"] == [10, 20, 30]
        assert [r["round"] for r in _records(run, p, "checkpoint")] == [15, 30]
        evaluated = [rnd for rnd, r in round_records(run, p).items() if "total" in r]
        assert evaluated == [10, 20, 30]
    assert [e["round"] for e in s["evaluations"]] == [10, 20, 30]
    assert s["evaluations"][-1]["accuracy"] > 0.2
    assert s["sync"]["rounds"] == 30 and s["sync"]["all_agree"]
    # summary.json stays compact: one line per round (and one per class for the per-class accuracy)
    assert len((run / "summary.json").read_text().splitlines()) < 30 + 40 + len(s["classes"])


@pytest.mark.parametrize("phase", ["exchange"])      # the other points: tests/test_sim.py
def test_kill_at_one_local_step_per_round_survivors_finish_exactly(tmp_path, procs, phase):
    cfg, path = make_config(tmp_path, 5, train={**STEPS, "local_steps": 1, "rounds": 12})
    victim = 2
    add_faults(path, {"peer": victim, "round": 6, "phase": phase})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(5)]
    codes = wait_all(ps, 240)
    assert codes[victim] == CRASH_EXIT_CODE and [c for i, c in enumerate(codes) if i != victim] == [0] * 4, codes
    s = summary(run)
    survivors = [0, 1, 3, 4]
    assert [r["round"] for r in s["rounds"]] == list(range(1, 13))
    r6 = s["rounds"][5]
    assert r6["members"] == survivors and r6["digests_agree"], r6
    for rnd in (5, 6, 12):
        members = [0, 1, 2, 3, 4] if rnd < 6 else survivors
        check_round_exact(run, rnd, members, survivors)
    assert all(r["members"] == survivors for r in s["rounds"][5:])


# A restarted peer downloading and rejoining: tests/test_faults.py (real processes) and tests/test_sim.py (every
# fault point, many schedules).
