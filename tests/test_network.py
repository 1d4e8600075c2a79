"""Real peer processes averaging over ZeroMQ on loopback (tiny model, synthetic data)."""
import signal
import subprocess
import sys
import time
from pathlib import Path


import numpy as np

from helpers import check_round_exact, load_pre, make_config, round_records, start_peer, summary, wait_all

ROOT = Path(__file__).resolve().parents[1]


def test_five_peers_reach_exact_agreed_consensus_and_learn(tmp_path, procs):
    cfg, path = make_config(tmp_path, 5, train={"rounds": 3})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(5)]
    assert wait_all(ps, 240) == [0] * 5

    s = summary(run)
    assert [r["round"] for r in s["rounds"]] == [1, 2, 3]
    for r in s["rounds"]:
        assert r["members"] == [0, 1, 2, 3, 4]
        assert len(set(r["digests"].values())) == 1 and len(r["digests"]) == 5
        check_round_exact(run, r["round"], r["members"], r["members"])
        # bandwidth: about 2x the float bytes per peer, not (N-1)x
        model_bytes = s["final"]["model_bytes"]
        assert all(b < 2.0 * model_bytes for b in r["bytes_sent"].values()), r["bytes_sent"]
    accs = [r["accuracy"] for r in s["rounds"]]
    assert accs[-1] > accs[0] + 0.05, accs
    assert accs[-1] > 0.3, accs
    import torch
    c = torch.load(run / "consensus.pt", map_location="cpu", weights_only=True)
    assert c["round"] == 3 and c["peers"] == [0, 1, 2, 3, 4] and c["digest"] == s["final"]["digest"]
    # the exported model is the last round's consensus with BatchNorm statistics pooled over all peers:
    # the same bytes on every peer (digest-checked), differing from the exact mean only in running stats
    assert c["bn_pooled"] and c["round_digest"] == s["rounds"][-1]["digests"]["0"] != c["digest"]
    last = [round_records(run, p)[3] for p in range(5)]
    assert {r["bn_digest"] for r in last} == {c["digest"]} and all(r["bn_pooled"] for r in last)
    from p2pfed.consensus import digest
    from helpers import load_post
    post = load_post(run, 3, 0)
    for i, (k, v) in enumerate(c["state_dict"].items()):
        same = np.array_equal(v.numpy(), post[i])
        assert same != k.endswith(("running_mean", "running_var")), k
    assert digest.digest({k: v.numpy() for k, v in c["state_dict"].items()}) == c["digest"]
    assert c["model_args"]["width_mult"] == 0.1
    assert c["written_by"] == 0                      # the lowest live id, and only it
    assert sum("wrote " in (run / f"peer-{i}.log").read_text() for i in range(5)) == 1


def test_dirichlet_partitions_weight_by_sample_count(tmp_path, procs):
    cfg, path = make_config(tmp_path, 4, train={"rounds": 1}, data={"partition": "dirichlet", "alpha": 0.3})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(4)]
    assert wait_all(ps, 180) == [0] * 4
    from p2pfed.learning import datasets, partition
    labels = datasets.load_split(cfg.data, "train").labels
    sizes = [len(p) for p in partition.partition(labels, 4, "dirichlet", 0.3, cfg.data.seed)]
    assert len(set(sizes)) > 1, "the partition should be unequal for this test to mean anything"
    r = summary(run)["rounds"][0]
    assert r["weights"] == {str(i): sizes[i] for i in range(4)}
    assert [load_pre(run, 1, i)[1] for i in range(4)] == sizes
    check_round_exact(run, 1, [0, 1, 2, 3], [0, 1, 2, 3])


def _launch(tmp_path, procs, *extra, **kw):
    cmd = [sys.executable, str(ROOT / "launch.py"), "--peers", "3", "--config", str(tmp_path / "peers.toml"),
           "--run-dir", str(tmp_path / "run"), *extra]
    return procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, **kw)


def _children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def test_launch_end_to_end_writes_consensus_and_summary(tmp_path, procs):
    make_config(tmp_path, 3, train={"rounds": 2})
    p = _launch(tmp_path, procs, "--no-report")
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out
    assert (tmp_path / "run" / "consensus.pt").stat().st_size > 0
    s = summary(tmp_path / "run")
    assert all(r["digests_agree"] for r in s["rounds"]) and len(s["rounds"]) == 2
    assert "digests agreed in every round: True" in out
    assert f"summary: {tmp_path / 'run' / 'summary.json'}" in out


def _peers_of(launcher, n: int) -> list[int]:
    """The PIDs of the n peer processes launch.py started (bounded wait)."""
    deadline = time.monotonic() + 60
    kids = []
    while time.monotonic() < deadline and len(kids) < n:
        time.sleep(0.2)
        kids = _children_of(launcher.pid)
    assert len(kids) == n, f"launch.py should have started {n} peers"
    return kids


def test_launch_ctrl_c_leaves_no_process_behind(tmp_path, procs):
    make_config(tmp_path, 3, train={"rounds": 50, "max_steps": 200})
    # started as from a background job: SIGINT inherited as ignored (the cause of a hang seen in CI)
    p = _launch(tmp_path, procs, "--no-report", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    kids = _peers_of(p, 3)
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "interrupted; stopping all peers" in out, out
    for k in kids:
        assert not Path(f"/proc/{k}").exists() or "Z" in Path(f"/proc/{k}/stat").read_text().split()[2], \
            f"peer process {k} survived Ctrl-C"


def test_launch_verdict_names_a_peer_killed_from_outside_and_still_reports(tmp_path, procs):
    import os
    make_config(tmp_path, 3, train={"rounds": 60, "local_steps": 2})
    p = _launch(tmp_path, procs, "--no-restart")      # by default it would come back (tests/test_restarts.py)
    kids = _peers_of(p, 3)
    deadline = time.monotonic() + 60
    from p2pfed.outputs import metrics
    victim = None
    while time.monotonic() < deadline and victim is None:    # kill whichever peer is id 2, once it trains
        for k in kids:
            cmd = Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")
            if cmd[cmd.index(b"--id") + 1] == b"2":
                victim = k
        time.sleep(0.1)
    while time.monotonic() < deadline and not any(r["type"] == "step" and r["round"] >= 3
                                                  for r in metrics.read(tmp_path / "run" / "metrics-2.jsonl")):
        time.sleep(0.1)
    os.kill(victim, signal.SIGKILL)
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out
    assert "p2pfed: finished, but peers [2] died (peer 2 killed by SIGKILL)" in out, out
    assert (tmp_path / "run" / "summary.md").exists() and (tmp_path / "run" / "plots" / "accuracy.png").exists()
    assert summary(tmp_path / "run")["final"]["members"] == [0, 1]
