"""Peers that come back, with real processes: launch.py restarts a crashed peer, `p2pfed peer
--supervise` brings back one that libzmq would abort, and a real one-node Slurm cluster runs a
federation with `srun --from-slurm`, where a killed task leaves the others to finish and a
supervised one comes back. Each time: every round committed once, by every peer that held it,
with the exact weighted mean."""
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import add_faults, check_round_exact, committed_digests, make_config, start_peer, story, summary, wait_all

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _all_rounds_once(run: Path, n: int, rounds: int) -> None:
    """Every round of the plan committed, each with one digest over every peer and life."""
    digests = committed_digests(run, n)
    assert sorted(digests) == list(range(1, rounds + 1)), sorted(digests)
    assert all(len(d) == 1 for d in digests.values()), {r: d for r, d in digests.items() if len(d) > 1}


def _launch(tmp_path, procs, n, *flags):
    cmd = [sys.executable, str(ROOT / "launch.py"), "--peers", str(n), "--config", str(tmp_path / "peers.toml"),
           "--run-dir", str(tmp_path / "run"), "--no-report", *flags]
    p = procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=300)
    return p.returncode, out


def test_launch_restarts_a_peer_killed_by_sigkill_and_it_is_a_member_again(tmp_path, procs):
    rounds = 7
    make_config(tmp_path, 4, train={"rounds": rounds, "local_steps": 6}, output={"checkpoint_every": 1})
    code, out = _launch(tmp_path, procs, 4, "--sigkill", "2@2:exchange")
    run = tmp_path / "run"
    assert code == 0, out + story(run, 4)
    assert "peer 2 killed by SIGKILL in round 2" in out and "restarting it with --resume" in out, out
    assert "Restarted after a crash: peer 2 (1 time)" in out, out
    s = summary(run)
    assert s["restarts"] == {"2": {"restarts": 1, "back_in": s["restarts"]["2"]["back_in"]}}
    assert 2 not in s["rounds"][1]["members"] and s["restarts"]["2"]["back_in"][0] < rounds, s["restarts"]
    assert all(r["digests_agree"] for r in s["rounds"]) and s["rounds"][-1]["members"] == [0, 1, 2, 3]
    _all_rounds_once(run, 4, rounds)
    check_round_exact(run, rounds, [0, 1, 2, 3], [0, 1, 2, 3])


def test_no_restart_leaves_an_aborted_peer_dead_and_the_others_finish(tmp_path, procs):
    make_config(tmp_path, 3, train={"rounds": 3, "local_steps": 4})
    code, out = _launch(tmp_path, procs, 3, "--sigabrt", "1@2:exchange", "--no-restart")
    assert code == 0, out
    assert "finished, but peers [1] died (peer 1 killed by SIGABRT)" in out, out
    assert "restarting" not in out
    s = summary(tmp_path / "run")
    assert s["restarts"] == {} and s["rounds"][-1]["members"] == [0, 2]


def test_supervised_peer_aborted_mid_exchange_comes_back(tmp_path, procs):
    """SIGABRT, as libzmq's `Assertion failed: !_io_error` ends a process, halfway through the
    sending of its shards: the supervisor restarts it, it resumes and is a member again."""
    rounds = 8
    _, path = make_config(tmp_path, 3, train={"rounds": rounds, "local_steps": 15}, output={"checkpoint_every": 1})
    add_faults(path, {"peer": 1, "round": 2, "phase": "exchange", "action": "abort"})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i, *(["--supervise", "--spare"] if i == 1 else [])) for i in range(3)]
    assert wait_all(ps, 240, run) == [0, 0, 0], story(run, 3)
    stderr = (run / "peer-1.stderr").read_text()
    assert "peer 1 killed by SIGABRT" in stderr and "restarting it with --resume" in stderr, stderr
    s = summary(run)
    assert s["restarts"]["1"]["restarts"] == 1 and s["rounds"][-1]["members"] == [0, 1, 2]
    _all_rounds_once(run, 3, rounds)
    check_round_exact(run, rounds, [0, 1, 2], [0, 1, 2])


# ---------------------------------------------------------------------------- a real Slurm
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster (.ci/slurm-one-node), stopped by PID at the end; skips with the
    reason where slurm-wlm and munge are not installed or the daemons do not come up."""
    if os.geteuid() != 0 or not shutil.which("slurmctld") or not shutil.which("munged"):
        pytest.skip("needs root and Debian's slurm-wlm and munge (.ci/run installs them)")
    d = tmp_path_factory.mktemp("slurm")
    script = str(ROOT / ".ci" / "slurm-one-node")
    up = subprocess.run([script, "start", str(d)], capture_output=True, text=True, timeout=120)
    try:
        if up.returncode != 0:
            pytest.skip(f"the one-node Slurm cluster did not start: {up.stderr.strip()[-500:]}")
        yield {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
    finally:
        subprocess.run([script, "stop", str(d)], timeout=60)


def _srun(procs, env, tmp_path, n, *peer_flags):
    """`srun -n N --overcommit p2pfed peer --from-slurm ...`: its return code and output. The
    step is cancelled by its name if the test fails half-way."""
    name = f"p2pfed-test-{uuid.uuid4().hex[:8]}"
    cmd = ["srun", "-n", str(n), "--overcommit", "--wait=0", "--kill-on-bad-exit=0", f"--job-name={name}",
           f"--chdir={tmp_path}", sys.executable, "-m", "p2pfed", "peer", "--config", str(tmp_path / "peers.toml"),
           "--from-slurm", "--quiet", "--run-dir", str(tmp_path / "run"), *peer_flags]
    p = procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            subprocess.run(["scancel", f"--name={name}"], env=env, timeout=30)
    return p.returncode, out


def test_srun_federation_survives_a_killed_task(slurm, tmp_path, procs):
    rounds = 4
    _, path = make_config(tmp_path, 5, train={"rounds": rounds, "local_steps": 4})
    add_faults(path, {"peer": 3, "round": 2, "phase": "exchange", "action": "kill"})
    code, out = _srun(procs, slurm, tmp_path, 5)
    run = tmp_path / "run"
    assert code == 128 + signal.SIGKILL and "task 3: Killed" in out, out     # srun reports the dead task
    s = summary(run)
    assert [r["round"] for r in s["rounds"]] == list(range(1, rounds + 1)), out + story(run, 5)
    assert s["rounds"][-1]["members"] == [0, 1, 2, 4] and all(r["digests_agree"] for r in s["rounds"])
    assert "from the Slurm step of job" in (run / "peer-0.log").read_text(), "peer 0 did not log its federation"
    _all_rounds_once(run, 5, rounds)
    check_round_exact(run, rounds, [0, 1, 2, 4], [0, 1, 2, 4])


def test_srun_with_supervise_brings_an_aborted_task_back(slurm, tmp_path, procs):
    rounds = 9
    _, path = make_config(tmp_path, 5, train={"rounds": rounds, "local_steps": 4}, output={"checkpoint_every": 1})
    add_faults(path, {"peer": 3, "round": 2, "phase": "exchange", "action": "abort"})
    code, out = _srun(procs, slurm, tmp_path, 5, "--supervise")
    run = tmp_path / "run"
    assert code == 0, out + story(run, 5)
    assert "peer 3 killed by SIGABRT" in out and "restarting it with --resume" in out, out
    s = summary(run)
    assert s["restarts"]["3"]["restarts"] == 1 and s["rounds"][-1]["members"] == [0, 1, 2, 3, 4], s["restarts"]
    _all_rounds_once(run, 5, rounds)
    check_round_exact(run, rounds, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
