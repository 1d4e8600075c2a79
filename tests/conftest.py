"""Shared fixtures: real peer processes, always reaped, and the dev CIFAR-10 archive."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
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


class Procs:
    """Starts processes in their own session and kills every one of them at teardown."""
    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, **kw) -> subprocess.Popen:
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
