"""Secure aggregation with real peer processes: what a curious member receives, dropouts at every
point of the masked exchange, and a peer configured otherwise (docs/security.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np
import pytest

from helpers import add_faults, load_post, load_pre, make_config, peer_log, reference_mean, round_records, \
    start_peer, story, summary, wait_all
from p2pfed.consensus import averaging, digest, secagg
from p2pfed.run.node.faults import CRASH_EXIT_CODE

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
SECURE = {"secure_aggregation": True}


def _start_recording(procs, cfg_path: Path, peer_id: int) -> subprocess.Popen:
    run_dir = cfg_path.parent / "run"
    run_dir.mkdir(exist_ok=True)
    err = open(run_dir / f"peer-{peer_id}.stderr", "ab")
    return procs.start([sys.executable, str(HERE / "recording_peer.py"), str(cfg_path.parent / "frames"), "peer",
                        "--config", str(cfg_path), "--id", str(peer_id), "--quiet"],
                       stdout=subprocess.DEVNULL, stderr=err)


def _frames(tmp: Path, peer: int) -> list[dict]:
    path = tmp / "frames" / f"frames-{peer}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _array(tmp: Path, record: dict) -> np.ndarray:
    return np.load(tmp / "frames" / f"{record['array']}.npy")


def _flat(run: Path, rnd: int, peer: int) -> tuple[np.ndarray, int]:
    arrays, n = load_pre(run, rnd, peer)
    return averaging.flatten(OrderedDict((str(i), a) for i, a in enumerate(arrays))), n


def _check_mean_within_bound(run: Path, rnd: int, members: list[int], holders: list[int]) -> float:
    """Every holder holds the same bits, within secagg's bound of the float64 weighted mean of the
    members' pre-round states; integer buffers from the lowest member. Returns the worst error."""
    pres = {m: load_pre(run, rnd, m) for m in members}
    states = [OrderedDict((str(i), a) for i, a in enumerate(pres[m][0])) for m in members]
    ref = reference_mean(states, [pres[m][1] for m in members])
    bound = secagg.error_bound(len(members))
    worst, digests = 0.0, set()
    for h in holders:
        post = OrderedDict((str(i), a) for i, a in enumerate(load_post(run, rnd, h)))
        digests.add(digest.digest(post))
        for name, want in ref.items():
            got = post[name]
            if averaging.is_float(want):
                err = np.abs(got.astype(np.float64) - want) - np.abs(want) * 2.0 ** -24
                worst = max(worst, float(err.max(initial=0.0)))
            else:
                assert np.array_equal(got, pres[min(members)][0][int(name)]), "integer buffer not from the lowest id"
    assert len(digests) == 1, f"round {rnd}: holders {holders} differ"
    assert worst <= bound, f"round {rnd}: {worst} beyond the bound {bound}"
    return worst


def test_a_curious_member_receives_nothing_correlated_with_another_members_state(tmp_path, procs):
    n = 5
    cfg, path = make_config(tmp_path, n, train={"rounds": 3, "local_steps": 2}, security=SECURE)
    ps = [_start_recording(procs, path, i) for i in range(n)]
    assert wait_all(ps, 240, tmp_path / "run") == [0] * n, story(tmp_path / "run", n)
    run = tmp_path / "run"
    s = summary(run)
    assert [r["round"] for r in s["rounds"]] == [1, 2, 3] and all(r["digests_agree"] for r in s["rounds"])

    curious, checked = 0, 0
    for rec in _frames(tmp_path, curious):
        if rec["kind"] != "part":
            continue
        f = rec["fields"]
        sender, rnd = rec["from"], f["round"]
        assert f["codec"] == "m64" and f["members"] == list(range(n))
        flat, _ = _flat(run, rnd, sender)
        lo, hi = averaging.shard_bounds(flat.size, n)[f["shard"]]
        part = _array(tmp_path, rec)
        assert part.dtype == np.uint64 and part.size == hi - lo
        theirs = flat[lo:hi].astype(np.float64)
        seen = part.view(np.int64).astype(np.float64)
        plain = secagg.encode(flat[lo:hi], 0.2).view(np.int64).astype(np.float64)
        assert np.corrcoef(plain, theirs)[0, 1] > 0.99               # the check sees an unmasked part
        r = np.corrcoef(seen, theirs)[0, 1]
        assert abs(r) < 0.05, (sender, rnd, r)
        checked += 1
    assert checked == 3 * (n - 1)        # one part from every other member in every round
    for rnd in (1, 2, 3):
        _check_mean_within_bound(run, rnd, list(range(n)), list(range(n)))


def _revealed_sets(tmp: Path, peers: list[int]) -> dict[int, set]:
    """round -> the member sets over which some peer received a sum (`reduced`) of that round."""
    members = {}
    for p in peers:
        for rec in _frames(tmp, p):
            if rec["kind"] == "part":
                members[(rec["fields"]["round"], rec["fields"]["attempt"])] = tuple(rec["fields"]["members"])
    sets = defaultdict(set)
    for p in peers:
        for rec in _frames(tmp, p):
            if rec["kind"] == "reduced":
                key = (rec["fields"]["round"], rec["fields"]["attempt"])
                sets[key[0]].add(members[key])
    return sets


# every fault point runs in the simulator (tests/test_sim.py); here the rollback, with real processes
@pytest.mark.parametrize("phase", ["reveal"])
def test_a_member_that_dies_at_any_point_leaves_agreed_survivors_and_no_two_sums_one_member_apart(
        tmp_path, procs, phase):
    n, victim = 4, 2
    cfg, path = make_config(tmp_path, n, train={"rounds": 3, "local_steps": 2, "eval_every": 1}, security=SECURE)
    add_faults(path, {"peer": victim, "round": 2, "phase": phase})
    ps = [_start_recording(procs, path, i) for i in range(n)]
    codes = wait_all(ps, 240, tmp_path / "run")
    run = tmp_path / "run"
    survivors = [i for i in range(n) if i != victim]
    assert codes[victim] == CRASH_EXIT_CODE and [codes[i] for i in survivors] == [0] * 3, story(run, n)

    rounds = {r["round"]: r for r in summary(run)["rounds"]}
    assert sorted(rounds) == [1, 2, 3] and all(r["digests_agree"] for r in rounds.values()), rounds
    assert rounds[2]["members"] == rounds[3]["members"] == survivors
    if phase == "reveal":
        # sums over all four were seen: round 2 commits round 1's consensus again (nothing new revealed)
        assert set(rounds[2]["digests"].values()) == set(rounds[1]["digests"].values()), rounds[2]["events"]
        assert any("rolled back" in e for e in rounds[2]["events"]), rounds[2]["events"]
        # its weights were pooled over all four in round 1: not pooled again over three (a subtraction)
        assert not [r for p in survivors for r in _frames(tmp_path, p) if r["kind"] == "bnstats"
                    and r["fields"]["round"] == 2]
        assert all(round_records(run, p)[2]["bn_pooled"] for p in survivors)     # the model pooled before
    else:
        # nobody could unmask before the victim died: round 2 is the mean of the survivors
        _check_mean_within_bound(run, 2, survivors, survivors)
    _check_mean_within_bound(run, 3, survivors, survivors)

    for rnd, sets in _revealed_sets(tmp_path, survivors).items():
        for a in sets:
            for b in sets:
                assert len(set(a) ^ set(b)) != 1, f"round {rnd}: sums over {a} and {b} were both revealed"


def test_a_peer_without_secure_aggregation_is_named_as_a_recipe_mismatch(tmp_path, procs):
    """Three secure peers and a fourth without it (a round of two secure members never happens,
    so three carry on): the odd one stops, with the key named on both sides."""
    cfg, path = make_config(tmp_path, 4, train={"rounds": 3, "local_steps": 2}, security=SECURE)
    plain = tmp_path / "plain.toml"
    plain.write_text(path.read_text().replace("secure_aggregation = true", "secure_aggregation = false"))
    assert plain.read_text() != path.read_text()
    ps = [start_peer(procs, path, 0), start_peer(procs, path, 1), start_peer(procs, path, 2),
          start_peer(procs, plain, 3)]
    codes = wait_all(ps, 180, tmp_path / "run")
    run = tmp_path / "run"
    assert codes[:3] == [0, 0, 0] and codes[3] != 0, (codes, story(run, 4))
    assert "security.secure_aggregation: false here, (absent: at its default) there" in peer_log(run, 3) or \
        "security.secure_aggregation: (absent: at its default) here, true there" in peer_log(run, 3), story(run, 4)
    assert "security.secure_aggregation: true here, (absent: at its default) there" in peer_log(run, 0)
    assert [r["members"] for r in summary(run)["rounds"]] == [[0, 1, 2]] * 3


def test_synchronized_batchnorm_sums_travel_masked_and_train_as_the_plain_sums_do(tmp_path, procs):
    """train.batchnorm = "sync" with secure aggregation: each step's BatchNorm sums are masked
    128-bit sums; round 1 trains to the states of the same run with plain sums (float64 rounding
    apart), and a member killed mid-training is trained around (the redo on fresh batches), by
    three members: secure aggregation never sums over two."""
    train = {"rounds": 4, "local_steps": 2, "batchnorm": "sync", "optimizer": "sgd", "lr": 0.05}
    runs = {}
    for name, security in (("plain", {}), ("secure", SECURE)):
        tmp = tmp_path / name
        tmp.mkdir()
        cfg, path = make_config(tmp, 4, train=train, security=security)
        if name == "secure":
            add_faults(path, {"peer": 3, "round": 3, "phase": "train"})
        ps = [start_peer(procs, path, i) for i in range(4)]
        runs[name] = (tmp / "run", wait_all(ps, 240, tmp / "run"))
    plain, secure = runs["plain"][0], runs["secure"][0]
    assert runs["plain"][1] == [0, 0, 0, 0] and runs["secure"][1] == [0, 0, 0, CRASH_EXIT_CODE], story(secure, 4)
    for peer in range(4):
        a, b = _flat(plain, 1, peer)[0], _flat(secure, 1, peer)[0]
        assert np.max(np.abs(a.astype(np.float64) - b)) < 1e-4, peer
    rounds = summary(secure)["rounds"]
    assert all(r["digests_agree"] for r in rounds) and [r["members"] for r in rounds][2:] == [[0, 1, 2]] * 2
    for r in rounds:
        _check_mean_within_bound(secure, r["round"], r["members"], r["members"])
