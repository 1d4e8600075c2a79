"""What every bench shares: its flags, a real run (launch.py or `p2pfed centralized`) started,
timed, checked and read, worker processes started and collected, and the RESULT line.

A run gets a wall-clock deadline (RUN_TIMEOUT_S unless the bench says otherwise): past it, the
process this module started gets SIGTERM (launch.py then stops its own peers), and SIGKILL after
GRACE_S. A failed run is one SystemExit that names it, its command, the tail of its output and
the tail of each log in its run directory. Workers (`python -m bench.NAME --worker ...`) run from
the repository root, each in a session of its own, and are killed and reaped if any of them fails
or outlives the deadline.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 4 * 3600.0   # a run's deadline: over 4x the longest full-size run in docs/benchmarks.md
GRACE_S = 30.0               # after SIGTERM (or Ctrl-C), how long a run gets to stop its peers before SIGKILL
OUTPUT_TAIL = 3000           # characters of a failed run's stdout in its error (stderr: 2000)
LOG_LINES = 5                # lines of each of a failed run's logs in its error


# ---------------------------------------------------------------------------- flags
def shared_data(name: str) -> str:
    """The default path of a dev data set: ../shared/data/NAME beside the checkout."""
    return str(ROOT.parent / "shared" / "data" / name)


def add_data_flag(ap: argparse.ArgumentParser, name: str = "cifar10-dev.tar.xz") -> None:
    """--data: an image folder or a .tar.xz of one (default ../shared/data/NAME), made absolute here,
    since runs start in a temporary directory."""
    ap.add_argument("--data", default=shared_data(name), type=lambda p: str(Path(p).resolve()),
                    help="the data (an image folder or a .tar.xz of one); a relative path is taken from here")


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose help is the bench's whole docstring (what it runs, its flags and
    their defaults, its RESULT line), its usage named as it is run (`python -m bench.NAME`)."""
    script = Path(sys.argv[0])
    prog = f"python -m bench.{script.stem}" if script.suffix == ".py" and script.resolve().parent == BENCH else None
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def small_run_parser(doc: str) -> argparse.ArgumentParser:
    """parser(doc) with the flags of the small-size benches: --data, --peers, --train-limit,
    --epochs and --width-mult."""
    ap = parser(doc)
    add_data_flag(ap)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--width-mult", type=float, default=0.5)
    return ap


# ---------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Finished:
    """A run that ended by itself: its command, run directory, wall time and exit code."""
    cmd: list[str]
    run_dir: Path
    wall_s: float
    returncode: int


def run(cmd: list[str], run_dir: Path, *, what: str, cwd: Path, env: Mapping[str, str] | None = None,
        timeout_s: float = RUN_TIMEOUT_S, check: bool = True) -> Finished:
    """Run cmd (which writes its run into run_dir) in cwd to its end, its output captured, and
    time it. SystemExit naming `what` if it outlives timeout_s (it is stopped first) or, with
    check, if it exits non-zero."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        out, err = _stop(proc, signalled=False)
        raise SystemExit(f"{what}: still running after {timeout_s:.0f} s; stopped it\n"
                         + _story(cmd, run_dir, out, err)) from None
    except BaseException:       # Ctrl-C reached the run too: give it the time to stop its peers
        _stop(proc, signalled=True)
        raise
    wall = time.monotonic() - t0
    if check and proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode})\n" + _story(cmd, run_dir, out, err))
    return Finished(cmd, run_dir, wall, proc.returncode)


def launch(flags: list[str], run_dir: Path, *, what: str, cwd: Path, tree: Path = ROOT,
           env: Mapping[str, str] | None = None, timeout_s: float = RUN_TIMEOUT_S, check: bool = True) -> Finished:
    """`launch.py FLAGS --run-dir RUN_DIR` of the checkout at tree (this one by default): run()."""
    cmd = [sys.executable, str(tree / "launch.py"), *flags, "--run-dir", str(run_dir)]
    return run(cmd, run_dir, what=what, cwd=cwd, env=env, timeout_s=timeout_s, check=check)


def centralized(flags: list[str], run_dir: Path, *, what: str = "centralized run", cwd: Path = ROOT,
                timeout_s: float = RUN_TIMEOUT_S) -> Finished:
    """`python -m p2pfed centralized FLAGS --run-dir RUN_DIR`: run()."""
    cmd = [sys.executable, "-m", "p2pfed", "centralized", *flags, "--run-dir", str(run_dir)]
    return run(cmd, run_dir, what=what, cwd=cwd, timeout_s=timeout_s)


def summary(run_dir: Path) -> dict:
    """A finished federated run's summary.json."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: the run in {run_dir} wrote no consensus\n{log_tail(Path(run_dir))}")
    return json.loads(path.read_text())


def bytes_per_peer_round(s: dict) -> float:
    """From a run's summary: the bytes a peer sent in a round, the mean over its peers, then over its rounds."""
    rounds = s["rounds"]
    return sum(sum(r["bytes_sent"].values()) / len(r["bytes_sent"]) for r in rounds) / max(1, len(rounds))


def sync_s(rnd: dict) -> float:
    """A summary round's time from ready to commit (its `averaging_s` where it has no `sync_s`)."""
    return rnd.get("sync_s", rnd["averaging_s"])


def central_rounds(run_dir: Path) -> list[dict]:
    """A finished centralized run's round records (one per evaluation), from metrics-central.jsonl."""
    from p2pfed.outputs import metrics
    path = Path(run_dir) / "metrics-central.jsonl"
    rounds = [r for r in metrics.read(path) if r["type"] == "round"] if path.exists() else []
    if not rounds:
        raise SystemExit(f"{path}: no round records: the centralized run in {run_dir} evaluated nothing")
    return rounds


def log_tail(run_dir: Path, lines: int = LOG_LINES) -> str:
    """The last lines of each log (*.log, *.stderr) in run_dir, each under its path."""
    logs = sorted(p for p in Path(run_dir).glob("*") if p.suffix in (".log", ".stderr") and p.is_file())
    parts = []
    for p in logs:
        text = p.read_text(errors="replace").rstrip().splitlines()[-lines:]
        if text:
            parts.append(f"--- {p} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(parts) if parts else f"(no logs in {run_dir})"


def _story(cmd: list[str], run_dir: Path, out: str, err: str) -> str:
    """What a failed run's error shows: the command, its output's tails, its logs' tails."""
    parts = [f"command: {shlex.join(cmd)}"]
    if out.strip():
        parts.append(f"--- its stdout (last {OUTPUT_TAIL} characters)\n{out[-OUTPUT_TAIL:].rstrip()}")
    if err.strip():
        parts.append(f"--- its stderr (last 2000 characters)\n{err[-2000:].rstrip()}")
    parts.append(log_tail(run_dir))
    return "\n".join(parts)


def _stop(proc: subprocess.Popen, signalled: bool) -> tuple[str, str]:
    """Stop a run this module started and reap it: unless it was signalled already (Ctrl-C
    reaches its process group), SIGTERM; after GRACE_S (again), SIGKILL. Its remaining output."""
    for step in ("wait", "terminate", "kill") if signalled else ("terminate", "kill"):
        if proc.poll() is None and step == "terminate":
            proc.terminate()
        elif proc.poll() is None and step == "kill":
            proc.kill()
        try:
            out, err = proc.communicate(timeout=GRACE_S)
            return out or "", err or ""
        except subprocess.TimeoutExpired:
            if step == "kill":      # it is dead, but a process it started (launch.py's spare) holds its output
                proc.wait()
                proc.stdout.close()
                proc.stderr.close()
    return "", ""


# ---------------------------------------------------------------------------- workers
def run_workers(module: str, argvs: list[list[str]], *, what: str, timeout_s: float) -> list[dict]:
    """Start `python -m MODULE ARGV` for each argv, from the repository root, each in a session of
    its own (stdout read here, stderr to this terminal), wait for all under one deadline, and
    return the JSON object each printed on its last line. SystemExit naming the worker if one
    fails, prints no JSON, or outlives the deadline; every worker is reaped in any case."""
    cmds = [[sys.executable, "-m", module, *argv] for argv in argvs]
    procs: list[subprocess.Popen] = []
    outs: list[str] = []
    try:
        for cmd in cmds:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                          start_new_session=True))
        deadline = time.monotonic() + timeout_s
        for i, p in enumerate(procs):
            try:
                outs.append(p.communicate(timeout=max(0.1, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                raise SystemExit(f"{what}: worker {i} still running after {timeout_s:.0f} s; stopped all "
                                 f"{len(procs)}: {shlex.join(cmds[i])}") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    if any(codes):
        first = next(i for i, c in enumerate(codes) if c)
        raise SystemExit(f"{what} failed: exit codes {codes}; worker {first}: {shlex.join(cmds[first])} "
                         f"(its stderr is above)")
    got = []
    for i, out in enumerate(outs):
        last = out.strip().splitlines()[-1:] or [""]
        try:
            got.append(json.loads(last[0]))
        except json.JSONDecodeError:
            raise SystemExit(f"{what}: worker {i} printed no JSON on its last line ({last[0][:200]!r}): "
                             f"{shlex.join(cmds[i])}") from None
    return got


# ---------------------------------------------------------------------------- the last line
def result(fields: Mapping[str, object]) -> None:
    """Print the bench's last line, `RESULT key=value ...`, in the order of fields; the values
    already formatted as they are to be read (str() of each)."""
    parts = []
    for k, v in fields.items():
        text = str(v)
        if not k or any(c.isspace() or c == "=" for c in k) or not text or any(c.isspace() for c in text):
            raise ValueError(f"RESULT field {k!r}={text!r}: keys and values must be non-empty, without spaces "
                             f"(and keys without '=')")
        parts.append(f"{k}={text}")
    print("RESULT " + " ".join(parts), flush=True)
