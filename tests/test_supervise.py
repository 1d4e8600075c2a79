"""Peers that come back (fast tier): the restart policy, the supervisor with a stand-in child,
and a federation read from a Slurm step's environment."""
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from p2pfed import config
from p2pfed.config import ConfigError
from p2pfed.run.launch import slurm
from p2pfed.run.exitcodes import ExitCode
from p2pfed.run.launch.supervise import RestartPolicy, Restart, Stay, Supervisor, decide, exit_status

P = RestartPolicy(max_restarts=3, first_delay_s=0.5, max_delay_s=4.0, stable_s=60.0)


# ---------------------------------------------------------------------------- the policy
@pytest.mark.parametrize("code", [-signal.SIGKILL, -signal.SIGABRT, -signal.SIGSEGV, ExitCode.NETWORK_DOWN])
def test_a_crash_is_restarted_after_the_first_delay(code):
    assert decide(P, code, lived_s=5.0, got_going=False, restarts=0, last_delay_s=0.0) == Restart(0.5)


@pytest.mark.parametrize("code", [0, ExitCode.FAILED, ExitCode.USAGE, ExitCode.NO_PEERS, ExitCode.INJECTED_CRASH,
                                  ExitCode.INTERRUPTED, ExitCode.TERMINATED, -signal.SIGINT, -signal.SIGTERM])
def test_what_is_not_a_crash_stays_down(code):
    assert isinstance(decide(P, code, 100.0, True, 0, 0.0), Stay)


def test_an_unexpected_error_is_restarted_only_after_the_peer_got_going():
    assert "start-up" in decide(P, ExitCode.CRASHED, 3.0, got_going=False, restarts=0, last_delay_s=0).reason
    assert decide(P, ExitCode.CRASHED, 3.0, got_going=True, restarts=0, last_delay_s=0) == Restart(0.5)


def test_back_off_doubles_for_short_lives_resets_after_a_stable_one_and_is_bounded():
    assert decide(P, -9, 1.0, True, 1, 0.5) == Restart(1.0)
    assert decide(P, -9, 1.0, True, 2, 4.0) == Restart(4.0)            # capped at max_delay_s
    assert decide(P, -9, 61.0, True, 2, 4.0) == Restart(0.5)           # a stable life starts again
    stay = decide(P, -9, 1.0, True, 3, 1.0)
    assert isinstance(stay, Stay) and "3 times" in stay.reason


def test_exit_status_of_a_signal_is_what_a_shell_reports():
    assert exit_status(-signal.SIGABRT) == 134 and exit_status(3) == 3


# ---------------------------------------------------------------------------- the supervisor
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    metrics, lives = sys.argv[1], sys.argv[2]
    with open(lives, "a") as f:
        f.write(json.dumps(sys.argv[3:]) + "\\n")
    with open(metrics, "a") as f:
        f.write(json.dumps({"type": "plan", "peer": 0, "t": time.time(), "round": 0}) + "\\n")
    n = sum(1 for _ in open(lives))
    if n == 1:
        os.kill(os.getpid(), signal.SIGABRT)
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if "--hang" in sys.argv:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
        time.sleep(60)
    sys.exit(0)
""")


def _supervise(tmp_path, *extra, max_restarts=5):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    metrics, lives = tmp_path / "metrics-0.jsonl", tmp_path / "lives"
    sup = Supervisor([sys.executable, str(script), str(metrics), str(lives), *extra], 0, metrics,
                     RestartPolicy(max_restarts=max_restarts, first_delay_s=0.05))
    return sup, lives


def test_supervisor_restarts_a_crashed_child_with_resume_and_its_life(tmp_path):
    sup, lives = _supervise(tmp_path)
    assert sup.run() == 0
    argvs = [json.loads(line) for line in lives.read_text().splitlines()]
    assert argvs == [[], ["--resume", "--life", "2", "--last-exit", str(-signal.SIGABRT)],
                     ["--resume", "--life", "3", "--last-exit", str(-signal.SIGKILL)]]


def test_supervisor_gives_up_after_max_restarts_with_the_childs_status(tmp_path):
    sup, lives = _supervise(tmp_path, max_restarts=1)
    assert sup.run() == 128 + signal.SIGKILL
    assert len(lives.read_text().splitlines()) == 2


def test_supervisor_passes_sigterm_on_and_restarts_nothing(tmp_path):
    """The supervisor as a process: SIGTERM to it reaches the child, and both end (143)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    lives = tmp_path / "lives"
    lives.write_text("x\nx\n")          # the child's third life: it hangs until SIGTERM
    code = ("import sys; from pathlib import Path; from p2pfed.run.launch.supervise import *; "
            f"sys.exit(Supervisor([sys.executable, {str(script)!r}, {str(tmp_path / 'm')!r}, {str(lives)!r}, "
            "'--hang'], 0, Path('m'), RestartPolicy()).run())")
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(lives.read_text().splitlines()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 143
        assert len(lives.read_text().splitlines()) == 3        # nothing was restarted
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------- Slurm
def test_hostlists_and_task_counts_expand_as_slurm_writes_them():
    assert slurm.expand_hostlist("node[01-03,07],gpu5") == ["node01", "node02", "node03", "node07", "gpu5"]
    assert slurm.expand_hostlist("r[1-2]n[8-9]") == ["r1n8", "r1n9", "r2n8", "r2n9"]
    assert slurm.expand_hostlist("vm") == ["vm"]
    assert slurm.expand_counts("4(x2),3") == [4, 4, 3]
    for bad in ("node[01-", "node[a-b]", "a,,b"):
        with pytest.raises(ConfigError, match="SLURM_STEP_NODELIST"):
            slurm.expand_hostlist(bad)
    with pytest.raises(ConfigError, match="SLURM_STEP_TASKS_PER_NODE"):
        slurm.expand_counts("4x2")


def _env(procid, localid, nodes="n[1-2]", counts="3,2", dist=None, job=1234):
    env = {"SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), "SLURM_STEP_NUM_TASKS": "5",
           "SLURM_STEP_NODELIST": nodes, "SLURM_STEP_TASKS_PER_NODE": counts, "SLURM_JOB_ID": str(job)}
    if dist:
        env["SLURM_DISTRIBUTION"] = dist
    return env


def test_block_and_cyclic_placements_number_tasks_as_slurm_does():
    block = slurm.placement(slurm.step_of(_env(0, 0)))
    assert block == [("n1", 0), ("n1", 1), ("n1", 2), ("n2", 0), ("n2", 1)]
    cyclic = slurm.placement(slurm.step_of(_env(0, 0, dist="cyclic")))
    assert cyclic == [("n1", 0), ("n2", 0), ("n1", 1), ("n2", 1), ("n1", 2)]
    with pytest.raises(ConfigError, match="SLURM_DISTRIBUTION='plane'"):
        slurm.placement(slurm.step_of(_env(0, 0, dist="plane")))


def test_every_task_computes_the_same_federation_and_its_own_id():
    base = config.Config()
    got = [slurm.configure(base, _env(pid, lid), base_port=30000)
           for pid, lid in [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1)]]
    assert [pid for _, pid in got] == [0, 1, 2, 3, 4]
    assert len({c.peers for c, _ in got}) == 1
    peers = got[0][0].peers
    assert [(p.id, p.host, p.port, p.bind) for p in peers] == [
        (0, "n1", 30000, "0.0.0.0"), (1, "n1", 30001, "0.0.0.0"), (2, "n1", 30002, "0.0.0.0"),
        (3, "n2", 30000, "0.0.0.0"), (4, "n2", 30001, "0.0.0.0")]
    cfg, _ = slurm.configure(base, _env(0, 0, job=7))
    assert cfg.peers[0].port == slurm.default_base_port(7) == 20000 + 40 * 7
    assert slurm.default_base_port(299) + slurm.PORTS_PER_JOB - 1 < 32768      # below Linux's ephemeral ports
    assert cfg.train.threads == 0
    cfg, _ = slurm.configure(base, {**_env(0, 0), "SLURM_CPUS_PER_TASK": "4"})
    assert cfg.train.threads == 4                     # the task's cores


def test_slurm_errors_name_the_variable_or_flag():
    with pytest.raises(ConfigError, match="SLURM_PROCID is not set: start the peers with srun"):
        slurm.configure(config.Config(), {})
    with pytest.raises(ConfigError, match="--id 2 and --from-slurm disagree"):
        slurm.configure(config.Config(), _env(1, 1), peer_id=2)
    with pytest.raises(ConfigError, match="SLURM_LOCALID is 0"):
        slurm.configure(config.Config(), _env(1, 0))
    with pytest.raises(ConfigError, match="should run on n2 .* but SLURMD_NODENAME is n1"):
        slurm.configure(config.Config(), {**_env(3, 0), "SLURMD_NODENAME": "n1"})
    with pytest.raises(ConfigError, match="do not fit together"):
        slurm.configure(config.Config(), _env(0, 0, counts="3,3"))


def test_a_config_peer_keeps_its_data_dir_and_curve_keys_come_from_the_shared_directory(tmp_path):
    from p2pfed.run.node.keys import keygen_for_peers
    path = tmp_path / "slurm.toml"      # a [[peers]] entry for its data_dir alone: the step gives host and port
    sites = "".join(f'[[peers]]\nid = {k}\ndata_dir = "site{k}"\n\n' for k in range(5))
    path.write_text(f'[data]\ndataset = "folder"\npartition = "own"\n\n[security]\ncurve = true\n\n{sites}')
    base = config.load(path, placed_later=True)
    with pytest.raises(ConfigError, match="give --keys DIR"):
        slurm.configure(base, _env(3, 0))
    keys = tmp_path / "keys"
    assert keygen_for_peers(4, str(keys)) == 4
    with pytest.raises(ConfigError, match="peer-4.key is missing"):
        slurm.configure(base, _env(3, 0), keys_dir=str(keys))
    assert keygen_for_peers(5, str(keys)) == 1              # existing pairs are kept
    cfg, me = slurm.configure(base, _env(3, 0), keys_dir=str(keys))
    assert me == 3 and cfg.peer(3).data_dir == "site3" and cfg.peer(3).host == "n2"
    assert all(len(p.public_key) == 40 for p in cfg.peers)
    assert cfg.security.secret_key_file == str(keys / "peer-{id}.key_secret")
    from p2pfed.run.node.keys import load_keys
    assert load_keys(cfg, 3).public == cfg.peer(3).public_key.encode()


def test_a_warm_spare_becomes_the_command_it_is_given_and_an_unused_one_is_reaped(tmp_path):
    from p2pfed.run.launch.spare import Spare
    spare = Spare()
    p = spare.become(["keygen", "--out", str(tmp_path / "k"), "--name", "x"], stdout=tmp_path / "out",
                     stderr=tmp_path / "err")
    assert p.wait(timeout=120) == 0, (tmp_path / "err").read_text()
    assert (tmp_path / "k" / "x.key_secret").exists() and "public_key" in (tmp_path / "out").read_text()
    unused = Spare()
    unused.close()
    assert unused.proc.returncode is not None
