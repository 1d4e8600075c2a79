"""Shared fixtures: real peer processes, always reaped, and the dev CIFAR-10 archive."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def dev_archive() -> Path | None:
    """The dev CIFAR-10 archive: $P2PFED_DEV_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("P2PFED_DEV_DATA")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "data" / "cifar10-dev.tar.xz"]:
        if cand.is_file():
            return cand
    return None


@pytest.fixture
def dev_data() -> Path:
    path = dev_archive()
    if path is None:
        pytest.skip("real-data test: set P2PFED_DEV_DATA to cifar10-dev.tar.xz (../shared/data); it is absent here")
    return path


class ForkServer:
    """The client of tests/forkserver.py: `python -m p2pfed ...` children forked from one process
    that has imported torch once (about 4 s of CPU saved a peer). P2PFED_TEST_FORKSERVER=0 turns it
    off: every process then starts as a fresh interpreter."""
    _instance: "ForkServer | None" = None

    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("forkserver.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT,
                                     start_new_session=True)
        self.codes: dict[int, int] = {}
        self.ended = False
        self.cond = threading.Condition()
        self.write_lock = threading.Lock()
        self.start_lock = threading.Lock()
        self.started: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name="forkserver", daemon=True).start()
        try:
            ready = self.started.get(timeout=300)
        except queue.Empty:
            ready = None
        if ready != "ready":
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise RuntimeError("tests/forkserver.py did not start within 300 s (its error is above); "
                               "P2PFED_TEST_FORKSERVER=0 runs the tests without it")

    @classmethod
    def get(cls) -> "ForkServer":
        if cls._instance is None or cls._instance.ended:
            cls._instance = ForkServer()
        return cls._instance

    @classmethod
    def close(cls) -> None:
        if cls._instance is not None and not cls._instance.ended:
            cls._instance.proc.stdin.close()          # the server kills and reaps what is left, then exits
            cls._instance.proc.wait(timeout=60)
        cls._instance = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "ready" in msg:
                self.started.put("ready")
            elif "pid" in msg:
                self.started.put(msg["pid"])
            elif "exit" in msg:
                with self.cond:
                    self.codes[msg["exit"]] = msg["code"]
                    self.cond.notify_all()
                self._write({"reap": msg["exit"]})
        with self.cond:
            self.ended = True
            self.cond.notify_all()
        self.started.put(None)

    def _write(self, msg: dict) -> None:
        with self.write_lock:
            try:
                self.proc.stdin.write((json.dumps(msg) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):      # the server has ended; _read says so
                pass

    def start(self, req: dict) -> "ForkedProc":
        with self.start_lock:
            self._write(req)
            pid = self.started.get(timeout=60)
        if pid is None:
            raise RuntimeError("tests/forkserver.py has ended; P2PFED_TEST_FORKSERVER=0 runs the tests without it")
        return ForkedProc(self, pid, req["argv"])


class ForkedProc:
    """The part of subprocess.Popen the tests use, for a child of the fork server."""
    def __init__(self, server: ForkServer, pid: int, args: list[str]):
        self.server, self.pid, self.args = server, pid, args

    @property
    def returncode(self) -> int | None:
        return self.server.codes.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self.server.cond:
            done = self.server.cond.wait_for(lambda: self.pid in self.server.codes or self.server.ended, timeout)
        if self.pid in self.server.codes:
            return self.server.codes[self.pid]
        if done:
            raise RuntimeError(f"tests/forkserver.py ended before its child {self.pid} did")
        raise subprocess.TimeoutExpired(self.args, timeout)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:       # still unreaped by the server until we have its code
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _forkable(cmd, kw: dict) -> dict | None:
    """The fork server's request for `python -m p2pfed ...` or `python tests/SCRIPT.py ...` with plain
    streams, else None (Popen: launch.py, other programs, pipes)."""
    cmd = [str(c) for c in cmd]
    if os.environ.get("P2PFED_TEST_FORKSERVER", "1") == "0" or len(cmd) < 2 or cmd[0] != sys.executable:
        return None
    if cmd[1:3] == ["-m", "p2pfed"]:
        req = {"script": None, "argv": cmd[3:]}
    elif cmd[1].endswith(".py") and Path(cmd[1]).resolve().parent == Path(__file__).resolve().parent:
        req = {"script": str(Path(cmd[1]).resolve()), "argv": cmd[2:]}
    else:
        return None
    if set(kw) - {"stdin", "stdout", "stderr", "cwd", "env"} or kw.get("stdin", subprocess.DEVNULL) != subprocess.DEVNULL:
        return None
    streams = {}
    for name in ("stdout", "stderr"):
        target = kw.get(name)
        if target is None:
            streams[name] = "inherit"
        elif target == subprocess.DEVNULL:
            streams[name] = None
        elif hasattr(target, "name") and hasattr(target, "mode") and "a" in target.mode:
            target.flush()
            streams[name] = str(target.name)
        else:
            return None
    return dict(req, **streams, cwd=str(kw.get("cwd") or os.getcwd()), env=dict(kw.get("env") or os.environ))


class Procs:
    """Starts processes in their own session and kills every one of them at teardown."""
    def __init__(self):
        self.procs: list = []

    def start(self, cmd, **kw):
        req = _forkable(cmd, kw)
        if req is not None:
            p = ForkServer.get().start(req)
        else:
            kw.setdefault("stdin", subprocess.DEVNULL)
            p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def reap(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGCONT)
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs():
    ps = Procs()
    try:
        yield ps
    finally:
        ps.reap()


@pytest.fixture(autouse=True)
def _fast_cpu(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield


@pytest.fixture(scope="session", autouse=True)
def _fork_server():
    yield
    ForkServer.close()


# fixtures that start real processes or read the real data: a test that uses one is in the slow tier
_SLOW_FIXTURES = {"procs", "dev_data"}


def pytest_collection_modifyitems(config, items):
    """Two tiers (docs/testing.md): `pytest -m "not slow"` is the fast tier, for working; the
    README's command runs both. A test is slow if it is marked so or uses a fixture that starts
    real peer processes or reads the real data."""
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
