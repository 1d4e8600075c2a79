"""The tests' fork server (tests/forkserver.py) gives a child what a fresh interpreter would get."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ForkedProc
from helpers import make_config

PROBE = Path(__file__).resolve().with_name("probe.py")
pytestmark = pytest.mark.skipif(os.environ.get("P2PFED_TEST_FORKSERVER", "1") == "0",
                                reason="P2PFED_TEST_FORKSERVER=0: the tests start every process fresh")


def test_a_forked_command_prints_and_exits_as_a_fresh_interpreter_does(tmp_path, procs):
    with open(tmp_path / "out.txt", "ab") as out:
        p = procs.start([sys.executable, "-m", "p2pfed", "--help"], stdout=out, stderr=out)
    assert isinstance(p, ForkedProc), "python -m p2pfed with file streams should go through the fork server"
    assert p.wait(timeout=60) == 0
    fresh = subprocess.run([sys.executable, "-m", "p2pfed", "--help"], capture_output=True, text=True, timeout=120)
    assert (tmp_path / "out.txt").read_text() == fresh.stdout + fresh.stderr

    bad = procs.start([sys.executable, "-m", "p2pfed", "peer", "--config", str(tmp_path / "absent.toml"), "--id",
                       "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fresh = subprocess.run([sys.executable, "-m", "p2pfed", "peer", "--config", str(tmp_path / "absent.toml"),
                            "--id", "0"], capture_output=True, timeout=120)
    assert bad.wait(timeout=60) == fresh.returncode != 0


def test_a_forked_script_gets_its_argv_directory_environment_session_and_its_own_random_state(tmp_path, procs):
    runs = []
    for i in range(2):
        env = dict(os.environ, P2PFED_FORKSERVER_CHECK=f"child-{i}")
        with open(tmp_path / f"out-{i}.txt", "ab") as out:
            p = procs.start([sys.executable, str(PROBE), str(3 + i), "x"], stdout=out, stderr=out, cwd=tmp_path,
                            env=env)
        assert isinstance(p, ForkedProc), "a script in tests/ with file streams should go through the fork server"
        assert p.wait(timeout=60) == 3 + i
        runs.append((p.pid, json.loads((tmp_path / f"out-{i}.txt").read_text())))
    for i, (pid, got) in enumerate(runs):
        assert got["argv"] == [str(PROBE), str(3 + i), "x"]
        assert got["cwd"] == str(tmp_path) and got["path0"] == str(PROBE.parent)
        assert got["env"] == got["c_env"] == f"child-{i}"          # os.environ and the C environment
        assert got["sid"] == got["pid"] == pid
    assert runs[0][1]["random"] != runs[1][1]["random"] and runs[0][1]["np_random"] != runs[1][1]["np_random"]


def test_a_forked_peer_is_a_process_of_its_own_and_dies_by_its_pid(tmp_path, procs):
    _, path = make_config(tmp_path, 2)            # peer 1 never starts: peer 0 waits for it
    p = procs.start([sys.executable, "-m", "p2pfed", "peer", "--config", str(path), "--id", "0"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert isinstance(p, ForkedProc)
    time.sleep(1.0)
    assert p.poll() is None
    with open(f"/proc/{p.pid}/status") as f:
        ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
    assert ppid not in (0, 1, os.getpid())        # a child of the server, not of this process
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=30) == -signal.SIGKILL
    p.send_signal(signal.SIGKILL)                 # a dead child is not signalled again
