"""A warm spare: a process that has already imported torch and the peer's modules, and waits to
be told which peer to become. A supervisor (launch.py, `p2pfed peer --supervise`) keeps one, so
that a restart costs the peer's own set-up, not a new interpreter's start and torch's import
(2-3 s on a loaded 2-core machine, most of a restart).

The spare is `python -m p2pfed spare`. It imports, then reads one line from its standard input,
a JSON object:

    {"argv": ["peer", "--config", ...], "stderr": PATH or null, "stdout": PATH or null}

(PATH: opened for appending; null: the stream the spare was started with). It points its standard streams there and runs
`p2pfed ARGV` in the same process, which is then that peer: the supervisor's handle on the spare
(its Popen) is its handle on the peer. If standard input closes first (the supervisor ended), the
spare exits 0. Nothing is forked: each peer is still a fresh process of its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class Spare:
    """The supervisor's side: start a spare, and turn it into a peer."""

    def __init__(self, inherit: bool = False):
        """inherit: the spare (and so the peer it becomes) writes to this process's standard
        streams; else to /dev/null until a request names files."""
        quiet = None if inherit else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "p2pfed", "spare"], stdin=subprocess.PIPE,
                                     stdout=quiet, stderr=quiet, start_new_session=not inherit)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def become(self, argv: list[str], stderr: Path | None = None, stdout: Path | None = None) -> subprocess.Popen:
        """Make the spare run `p2pfed ARGV`; returns its Popen (the peer's process). Raises
        OSError if the spare has died (then start the peer the usual way)."""
        request = {"argv": argv, "stderr": str(stderr) if stderr else None, "stdout": str(stdout) if stdout else None}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.close()
        return self.proc

    def close(self) -> None:
        """End an unused spare at once (it holds nothing but imports) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.proc.wait()


def preload() -> None:
    """What a peer imports before it can start, imported once by the spare (no torch operation,
    no thread, no socket)."""
    import msgpack  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    from ..node import peer  # noqa: F401
    from ...outputs import logs  # noqa: F401


def serve(run) -> int:
    """The spare's side: preload, say ready, wait for the one request, then run(argv) as that
    peer. run is the `p2pfed` command line's main function."""
    preload()
    line = sys.stdin.readline()
    if not line.strip():
        return 0                      # the supervisor ended without needing me
    request = json.loads(line)
    for fd, path in ((1, request.get("stdout")), (2, request.get("stderr"))):
        if path:
            target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(target, fd)
            os.close(target)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    return run(list(request["argv"]))
