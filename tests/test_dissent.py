"""A dissenting minority is excluded, not fatal (invariant 9): when one member's digest differs,
the strict majority commits, the dissenter downloads the committed model and goes on; a peer
outvoted round after round stops with an error that says why."""
from helpers import add_faults, make_config, peer_log, start_peer, summary, wait_all
from p2pfed.consensus import exchange
from p2pfed.net import protocol

STEPS = {"local_steps": 2, "local_epochs": 0.0, "max_steps": 0}


def _dissent(path, peer, rounds):
    """Peer `peer` reports a false digest in each of `rounds`."""
    add_faults(path, *({"peer": peer, "round": r, "phase": "exchange", "action": "dissent"} for r in rounds))


def test_majority_rule():
    a, b = "a" * 64, "b" * 64
    assert exchange.majority({0: a, 1: a, 2: b}, 3) == a
    assert exchange.majority({0: a, 1: b}, 2) is None                  # a tie
    assert exchange.majority({0: a, 1: a, 2: b, 3: b}, 4) is None
    assert exchange.majority({0: a, 1: a}, 5) is None                  # dead members count against it
    assert exchange.majority({0: a, 1: a, 2: a}, 5) == a


# One dissenter outvoted, downloading and taking part again, and rounds without a strict majority: tests/test_sim.py
# (dissent faults of one to four peers, checked after every commit). Here: the real-process case that stops.


def test_a_peer_outvoted_round_after_round_stops_with_a_clear_error(tmp_path, procs):
    cfg, path = make_config(tmp_path, 5, train={**STEPS, "rounds": 8})
    _dissent(path, 2, range(2, 2 + protocol.MAX_CONSECUTIVE_DISSENT))
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(5)]
    codes = wait_all(ps, 240)
    assert codes[2] == 1 and [c for i, c in enumerate(codes) if i != 2] == [0] * 4, codes
    assert "computation differs" in peer_log(run, 2)
    s = summary(run)
    assert [r["round"] for r in s["rounds"]] == list(range(1, 9))
    assert s["rounds"][-1]["members"] == [0, 1, 3, 4] and s["rounds"][-1]["digests_agree"]
