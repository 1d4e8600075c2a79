"""A fork server for the tests' `python -m p2pfed ...` processes (tests only).

Every peer the suite starts used to pay for a fresh interpreter that imports torch: about 4 s of
CPU on a 2-core CI machine, a third of what a short test's peer costs in all. This server imports
torch and the peer's modules once, runs no torch operation and starts no thread, and forks one
child per request. Each child is still its own OS process with its own sockets, session and
memory; it sets up its standard streams, working directory and environment as the request says,
then runs `p2pfed`'s `__main__` as `python -m p2pfed ARGS` would (or a test's own peer script, as
`python SCRIPT ARGS` would), and leaves through the normal interpreter exit (atexit handlers,
non-daemon threads joined, the exit code of `sys.exit`). The tests' scripts (recording_peer.py,
old_peer.py) patch module and class attributes, which they do as well after the fork as before.

Protocol, one JSON object a line. On the control pipe the client writes
    {"argv": [...], "script": PATH|null, "env": {...}, "cwd": "...",
     "stdout": PATH|null, "stderr": PATH|"inherit"|null}
        (script null: `-m p2pfed`)
        (PATH: opened for appending; null: /dev/null; "inherit": this server's stream)
    {"reap": PID}          the client has read PID's exit code: release the zombie
and the server answers
    {"ready": true}        once, when the imports are done
    {"pid": PID}           for each start, in order
    {"exit": PID, "code": C}   when a child ends (C as subprocess's returncode: -N for signal N)
A child stays a zombie until the client sends `reap`, so its PID cannot be reused while the
client may still signal it. When the client closes the pipe, the server kills the process group
of every child still running, reaps them all and exits.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys


def _preload() -> None:
    import msgpack  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import zmq  # noqa: F401

    import p2pfed.run.cli  # noqa: F401
    import p2pfed.run.node.peer  # noqa: F401


def _send(fd: int, msg: dict) -> None:
    data = (json.dumps(msg) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _exited(pid: int) -> int | None:
    """The child's returncode if it has ended (left a zombie: WNOWAIT), else None."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None or info.si_pid == 0:
        return None
    return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status


def serve(ctl_in: int, ctl_out: int) -> dict | None:
    """The server's loop. Returns a request in a forked child; None in the server at the end."""
    running: set[int] = set()       # not yet reported
    zombies: set[int] = set()       # reported, not yet reaped
    buf = b""
    _send(ctl_out, {"ready": True})
    while True:
        readable, _, _ = select.select([ctl_in], [], [], 0.05)
        if readable:
            data = os.read(ctl_in, 1 << 16)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                if "reap" in req:
                    pid = int(req["reap"])
                    if pid in zombies:
                        zombies.discard(pid)
                        os.waitpid(pid, 0)
                    continue
                pid = os.fork()
                if pid == 0:
                    os.close(ctl_in)
                    os.close(ctl_out)
                    return req
                running.add(pid)
                _send(ctl_out, {"pid": pid})
        for pid in list(running):
            code = _exited(pid)
            if code is not None:
                running.discard(pid)
                zombies.add(pid)
                _send(ctl_out, {"exit": pid, "code": code})
    for pid in running:
        try:
            os.killpg(pid, signal.SIGCONT)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in running | zombies:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return None


def _become(req: dict) -> None:
    """In the child: a new session, the request's streams, directory, environment and argv."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    for fd, target in ((1, req.get("stdout")), (2, req.get("stderr"))):
        if target == "inherit":
            continue
        if target is None:
            os.dup2(devnull, fd)
        else:
            f = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(f, fd)
            os.close(f)
    os.close(devnull)
    os.closerange(3, 1 << 16)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    # what a fresh interpreter would have: its own random state (the fork copied the server's)
    import random

    import numpy as np
    random.seed()
    np.random.seed()
    script = req.get("script")
    # `python -m` puts the working directory first on the path, `python SCRIPT` the script's folder
    sys.path[0] = os.path.dirname(os.path.abspath(script)) if script else os.getcwd()
    sys.argv = [script or sys.argv[0], *req["argv"]]


if __name__ == "__main__":
    ctl_in, ctl_out = os.dup(0), os.dup(1)     # the control pipe moves off the standard streams,
    null = os.open(os.devnull, os.O_RDWR)      # so nothing a child prints can reach it
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    _preload()
    request = serve(ctl_in, ctl_out)
    if request is not None:
        _become(request)
        import runpy
        if request.get("script"):
            runpy.run_path(request["script"], run_name="__main__")
        else:
            runpy.run_module("p2pfed", run_name="__main__", alter_sys=True)
