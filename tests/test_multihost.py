"""Peers on separate network hosts: Linux network namespaces joined by veth pairs and a bridge.

Each peer runs in its own namespace with its own address (10.77.<run>.<k>/24), binds 0.0.0.0 and
advertises its address. Skips where namespaces cannot be created (not root, no iproute2).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.netns import Hosts, HostsUnavailable
from helpers import check_round_exact, make_config, story, summary, wait_all
from p2pfed import config

pytestmark = pytest.mark.netns


def _hosts(n: int):
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    try:
        h = Hosts(n)
    except HostsUnavailable as e:
        pytest.skip(str(e))
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def hosts3():
    yield from _hosts(3)


@pytest.fixture
def hosts5():
    yield from _hosts(5)


def _config(tmp_path: Path, hosts: Hosts, **sections):
    cfg, path = make_config(tmp_path, len(hosts.names), **sections)
    peers = tuple(config.PeerSpec(id=i, host=addr, port=5550, bind="0.0.0.0") for i, addr in enumerate(hosts.addrs))
    cfg = config.replace_peers(cfg, peers)
    path.write_text(config.dumps_toml(cfg))
    return cfg, path


def _start(procs, hosts: Hosts, path: Path, i: int):
    run = path.parent / "run"
    run.mkdir(exist_ok=True)
    err = open(run / f"peer-{i}.stderr", "ab")
    return procs.start(["ip", "netns", "exec", hosts.names[i], sys.executable, "-m", "p2pfed", "peer", "--config",
                        str(path), "--id", str(i), "--quiet"], stdout=subprocess.DEVNULL, stderr=err)


def test_three_hosts_reach_exact_consensus(tmp_path, procs, hosts3):
    cfg, path = _config(tmp_path, hosts3, train={"rounds": 2})
    ps = [_start(procs, hosts3, path, i) for i in range(3)]
    assert wait_all(ps, 180) == [0, 0, 0]
    s = summary(tmp_path / "run")
    for r in s["rounds"]:
        assert r["members"] == [0, 1, 2] and r["digests_agree"]
        check_round_exact(tmp_path / "run", r["round"], r["members"], r["members"])


# A cut-off host that waits and rejoins: test_a_healed_partition_rejoins_within_the_bound_and_loses_no_attempt below
# (real namespaces) and tests/test_sim.py (cuts both ways and one way, many schedules).


REJOIN_S, REJOIN_ROUNDS = 2.0, 3      # the bound after a heal: 2 s or 3 rounds, whichever is longer


def rejoin_after(recs: list[dict], healed: float, everyone: list[int]) -> tuple[float, int, dict]:
    """(seconds, rounds committed in between, the round) from the heal to the first round of all
    peers in one peer's round records."""
    after = [r for r in recs if r["t"] > healed]
    back = next(r for r in after if r["members"] == everyone)
    return back["t"] - healed, sum(1 for r in after if r["t"] < back["t"]), back


# the leader on either side, and many more cuts, run in the simulator (tests/test_sim.py); here the harder
# side with real sockets and kernel-level cuts
@pytest.mark.parametrize("minority", [[0, 1]], ids=["leader-in-minority"])
def test_a_healed_partition_rejoins_within_the_bound_and_loses_no_attempt(tmp_path, procs, hosts5, minority):
    """A 2|3 cut for 15 s, with the leader (peer 0) on either side: the majority goes on, the
    minority waits; after the heal the minority reconnects (ZeroMQ's own heartbeat closed the dead
    links, reconnects are at most a second apart), downloads the consensus and is a member again
    within 2 s or 3 rounds, whichever is longer, and no attempt fails after the heal. The peers
    that come back are added by the proposal of the lowest live member of the last round, which
    waits for them, never derived into a group by peers that may not have seen them come back
    (docs/protocol.md, "Start-up, rejoin and the end of a run")."""
    from p2pfed.outputs import metrics
    # rounds take 0.4 to 1.5 s on 2 cores (measured; the machine's load decides): 90 outlast the 15 s
    # cut and leave dozens for the rejoin, and every round after the rejoin is minutes of suite time
    n_rounds = 90
    cfg, path = _config(tmp_path, hosts5, train={"local_steps": 2, "local_epochs": 0.0, "max_steps": 0,
                                                  "rounds": n_rounds})
    run = tmp_path / "run"
    ps = [_start(procs, hosts5, path, i) for i in range(5)]
    watch = min(p for p in range(5) if p not in minority)      # a peer of the majority

    def rounds(peer):
        return [r for r in metrics.read(run / f"metrics-{peer}.jsonl") if r["type"] == "round"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(rounds(watch)) < 5:
        time.sleep(0.1)
    hosts5.partition(minority)
    time.sleep(15)
    during = rounds(watch)[-1]["round"]
    hosts5.rejoin(minority)
    healed = time.time()
    codes = wait_all(ps, 300, run)
    assert codes == [0] * 5, (codes, story(run, 5))
    recs = rounds(watch)
    assert during > 10, during                               # the majority went on during the cut
    assert during < n_rounds - 2 * REJOIN_ROUNDS, f"the run ended during the cut (round {during}): raise rounds"
    seconds, between, back = rejoin_after(recs, healed, list(range(5)))
    per_round = (recs[-1]["t"] - back["t"]) / max(1, len(recs) - recs.index(back) - 1)
    print(f"rejoin ({'leader in minority' if 0 in minority else 'leader in majority'}): {seconds:.2f} s, "
          f"{between} rounds between the heal and round {back['round']} of all 5; rounds of 5 take {per_round:.2f} s")
    assert seconds <= REJOIN_S or between <= REJOIN_ROUNDS, (seconds, between, story(run, 5))
    for r in recs:                                           # no attempt failed after the heal; the
        if r["t"] > healed:                                  # proposal (attempt 1) adds the peers that came back
            assert not r["events"] and r["attempt"] <= 1, r
    s = summary(run)
    assert s["rounds"][-1]["members"] == [0, 1, 2, 3, 4] and all(r["digests_agree"] for r in s["rounds"])
    for p in minority:                                       # the minority never committed a round alone
        assert all(len(r["members"]) >= 3 for r in rounds(p))


def _phases(run: Path, peer: int) -> list[dict]:
    from p2pfed.outputs import metrics
    return [r for r in metrics.read(run / f"metrics-{peer}.jsonl") if r["type"] == "phase"]


def _check_no_split(run: Path, n: int) -> None:
    """Every round that any two peers committed has one digest."""
    from p2pfed.outputs import metrics
    seen: dict[int, set] = {}
    for p in range(n):
        for r in metrics.read(run / f"metrics-{p}.jsonl"):
            if r["type"] == "round":
                seen.setdefault(r["round"], set()).add(r["digest"])
    split = {r: d for r, d in seen.items() if len(d) > 1}
    assert not split, split


def test_a_cut_while_parts_are_in_flight_splits_nothing_and_the_cut_side_rejoins(tmp_path, procs, hosts5):
    """Links shaped to 10 Mbit/s, so that an exchange of the 0.42 MB model lasts a few tenths of a
    second; {3, 4} are cut off while peer 0 is in an exchange with them, for 10 s. The attempt in flight fails or completes as one,
    no round has two digests, the majority goes on without the cut side, nothing hangs, and the
    cut side is a member again within the bound of the healed-partition test."""
    from p2pfed.outputs import metrics
    # heartbeats queue behind the shards on a shaped link: a longer dead_after_s than FAST's; 40
    # rounds outlast the cut in round 4 or 5, its 10 s and the rejoin (checked below)
    cfg, path = _config(tmp_path, hosts5, train={"local_steps": 2, "local_epochs": 0.0, "max_steps": 0,
                                                  "rounds": 40}, averaging={"dead_after_s": 3.0})
    hosts5.shape(10)
    run = tmp_path / "run"
    ps = [_start(procs, hosts5, path, i) for i in range(5)]
    deadline = time.monotonic() + 180
    cut_at = None
    while time.monotonic() < deadline:
        ph = _phases(run, 0)
        if len([r for r in ph if r["phase"] == "exchange"]) >= 4 and ph[-1]["phase"] == "exchange":
            hosts5.partition([3, 4])
            cut_at = time.time()
            break
        time.sleep(0.01)
    assert cut_at is not None, story(run, 5)
    in_flight = _phases(run, 0)
    last_ex = max(r["t"] for r in in_flight if r["phase"] == "exchange")
    time.sleep(10)
    hosts5.rejoin([3, 4])
    healed = time.time()
    codes = wait_all(ps, 300, run)
    assert codes == [0] * 5, (codes, story(run, 5))
    _check_no_split(run, 5)
    recs = [r for r in metrics.read(run / "metrics-0.jsonl") if r["type"] == "round"]
    cut_round = next(r for r in recs if r["t"] > cut_at)
    assert last_ex < cut_at < cut_round["t"]                 # the cut came while round cut_round was exchanging
    assert any(cut_at < r["t"] < healed and 3 not in r["members"] for r in recs)   # the majority went on
    assert sum(r["t"] > healed for r in recs) > 2 * REJOIN_ROUNDS, "the run ended before the rejoin: raise rounds"
    seconds, between, back = rejoin_after(recs, healed, list(range(5)))
    print(f"rejoin after a mid-exchange cut: {seconds:.2f} s, {between} rounds")
    assert seconds <= REJOIN_S or between <= REJOIN_ROUNDS, (seconds, between, story(run, 5))
    s = summary(run)
    assert s["rounds"][-1]["members"] == [0, 1, 2, 3, 4] and all(r["digests_agree"] for r in s["rounds"])


def test_a_one_way_link_splits_nothing_and_the_peer_rejoins_when_it_carries_both_ways(tmp_path, procs, hosts5):
    """For 10 s peer 0 (the leader) reaches peer 3 but peer 3's packets to peer 0 are dropped
    (every other link works). No round has two digests, the rounds go on without peer 3, nothing
    hangs, and once the link carries both ways again peer 3 is a member within the bound."""
    from p2pfed.outputs import metrics
    # 60 rounds outlast the 10 s block and the rejoin at 0.25 to 1.5 s a round (measured on 2 cores)
    cfg, path = _config(tmp_path, hosts5, train={"local_steps": 2, "local_epochs": 0.0, "max_steps": 0,
                                                  "rounds": 60})
    run = tmp_path / "run"
    ps = [_start(procs, hosts5, path, i) for i in range(5)]

    def rounds(peer):
        return [r for r in metrics.read(run / f"metrics-{peer}.jsonl") if r["type"] == "round"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(rounds(0)) < 5:
        time.sleep(0.1)
    hosts5.block(3, 0)
    blocked = time.time()
    time.sleep(10)
    hosts5.unblock(3, 0)
    healed = time.time()
    codes = wait_all(ps, 300, run)
    assert codes == [0] * 5, (codes, story(run, 5))
    _check_no_split(run, 5)
    recs = rounds(0)
    assert sum(r["t"] > healed for r in recs) > 2 * REJOIN_ROUNDS, "the run ended before the rejoin: raise rounds"
    assert any(blocked < r["t"] < healed and 3 not in r["members"] for r in recs)   # went on without peer 3
    seconds, between, back = rejoin_after(recs, healed, list(range(5)))
    print(f"rejoin after a one-way link: {seconds:.2f} s, {between} rounds")
    assert seconds <= REJOIN_S or between <= REJOIN_ROUNDS, (seconds, between, story(run, 5))
    s = summary(run)
    assert s["rounds"][-1]["members"] == [0, 1, 2, 3, 4] and all(r["digests_agree"] for r in s["rounds"])
