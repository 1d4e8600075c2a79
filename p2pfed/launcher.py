"""`python launch.py --peers N`: start N local peer processes, show progress, reap them all.

The launcher is not a server: it writes a config, starts `p2pfed peer` subprocesses (no
fork after torch or zmq are imported), reads their metrics files to show progress, can
restart a peer that died (`--restart ID@ROUND`), forwards Ctrl-C and reaps every child.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config as config_mod
from .config import ConfigError
from .exitcodes import ExitCode, describe
from .faults import CRASH_EXIT_CODE

GRACE_S = 10.0           # after Ctrl-C, how long peers get to exit before SIGKILL
PLAIN_EVERY_S = 30.0     # without a terminal, print each peer's progress this often


# Named settings, applied before the other options. "cpu" is the default recipe (docs/benchmarks.md
# has what each part of it bought): CIFAR stem, channels-last, 32 images per peer per step,
# averaging after every step in the first third of the run, every 2 in the second, every 4 in the
# last (post-local SGD), SGD with Nesterov momentum and a one-cycle schedule scaled linearly with
# the global batch, label smoothing, BatchNorm statistics pooled over all peers before evaluation
# and export.
PRESETS = {
    "cpu": {"model": {"pretrained": False, "input_size": 32, "cifar_stem": True},
            "train": {"epochs": 8.0, "local_steps": [1, 2, 4], "batch_size": 32, "optimizer": "sgd", "lr": 0.05,
                      "lr_scaling": "linear", "lr_base_batch": 128, "schedule": "onecycle", "label_smoothing": 0.1,
                      "bn_pool_images": 512}},
    "seed": {"model": {"pretrained": True, "input_size": 224, "cifar_stem": False, "width_mult": 1.0},
             "train": {"rounds": 1, "local_epochs": 1.0, "optimizer": "sgd", "lr": 0.01, "schedule": "cosine"}},
}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch.py", description="Run N p2pfed peers on this machine.")
    p.add_argument("--peers", type=int, default=5, help="number of local peers (default 5)")
    p.add_argument("--config", default=None, help="base config (default: peers.toml in this directory if present)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="cpu: the default CPU recipe; seed: the notebook's setup (ImageNet weights, 224 px input, "
                        "1 round of 1 epoch; needs internet or cached weights, meant for a GPU)")
    p.add_argument("--epochs", type=float, help="run length in epochs over each peer's partition")
    p.add_argument("--rounds", type=int, help="run exactly this many rounds instead of --epochs")
    p.add_argument("--local-steps", help="local optimiser steps per round, e.g. 4, or 2,4,8 to grow over the run")
    p.add_argument("--local-epochs", type=float, help="or: local epochs per round")
    p.add_argument("--eval-every", type=int, help="evaluate every N rounds (default: once per epoch)")
    p.add_argument("--dataset", choices=["cifar10", "folder", "synthetic"])
    p.add_argument("--data-dir")
    p.add_argument("--partition", choices=["iid", "dirichlet"])
    p.add_argument("--alpha", type=float)
    p.add_argument("--width-mult", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-steps", type=int, help="cap local steps per round (quick demos)")
    p.add_argument("--train-limit", type=int, help="use only N training images in all")
    p.add_argument("--test-limit", type=int, help="evaluate on only N test images")
    p.add_argument("--threads", type=int, help="torch threads per peer (default cores / peers)")
    p.add_argument("--run-dir", help="default runs/<timestamp>")
    p.add_argument("--kill", action="append", default=[], metavar="ID@ROUND:PHASE",
                   help="crash a peer at train|exchange|between-rounds of a round (repeatable)")
    p.add_argument("--stall", action="append", default=[], metavar="ID@ROUND:PHASE",
                   help="stall a peer (faults.stall_s) at a point of a round (repeatable)")
    p.add_argument("--restart", action="append", default=[], metavar="ID@ROUND",
                   help="restart a dead peer with --resume once the others reach ROUND (repeatable)")
    p.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=None,
                   help="export + INT8-quantize the consensus at the end (default: output.quantize)")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="render plots and summary.md at the end")
    p.add_argument("--timeout-s", type=float, default=0, help="give up (and kill all peers) after this long")
    return p.parse_args(argv)


def _int_list(flag: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be an integer or a comma-separated list, e.g. 4 or 2,4,8") from None


def resolve_config(args) -> tuple[config_mod.Config, Path]:
    base_path = args.config or ("peers.toml" if Path("peers.toml").exists() else None)
    cfg = config_mod.load(base_path) if base_path else config_mod.Config()
    if args.preset:
        cfg = config_mod.override(cfg, **PRESETS[args.preset])
    run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = config_mod.override(
        cfg,
        train={"epochs": args.epochs, "rounds": args.rounds, "local_epochs": args.local_epochs,
               "local_steps": _int_list("--local-steps", args.local_steps), "eval_every": args.eval_every,
               "batch_size": args.batch_size, "max_steps": args.max_steps, "threads": args.threads},
        data={"dataset": args.dataset, "data_dir": args.data_dir, "partition": args.partition, "alpha": args.alpha,
              "seed": args.seed, "train_limit": args.train_limit, "test_limit": args.test_limit},
        model={"width_mult": args.width_mult},
        output={"run_dir": str(run_dir), "quantize": args.quantize})
    cfg = config_mod.replace_peers(cfg, config_mod.local_peers(args.peers, free_ports(args.peers)))
    if cfg.averaging.min_peers == 0:
        # all peers share one host, so a partition is impossible: any survivors may finish a round
        cfg = config_mod.override(cfg, averaging={"min_peers": 1})
    faults = [config_mod.parse_fault(s, "crash") for s in args.kill]
    faults += [config_mod.parse_fault(s, "stall") for s in args.stall]
    cfg = config_mod.replace_faults(cfg, cfg.faults + tuple(faults))
    return cfg, run_dir


@dataclass
class PeerView:
    """What the launcher knows about one peer, from its process and metrics file."""
    id: int
    proc: subprocess.Popen | None = None
    offset: int = 0
    round: int = 0
    rounds: int = 0              # from the peer's "plan" record
    epoch: float = 0.0
    epochs: float = 0.0
    step: int = 0                # optimiser steps taken (global_step of the last "step" record)
    steps: int = 0               # total_steps of the plan
    phase: str = "starting"
    loss: float | None = None
    accuracy: float | None = None
    evaluations: int = 0
    restarts: int = 0
    exit_code: int | None = None
    events: list = field(default_factory=list)

    def line(self) -> str:
        if self.exit_code is not None:
            state = "finished" if self.exit_code == 0 else (
                "crashed (injected)" if self.exit_code == CRASH_EXIT_CODE else f"exited {self.exit_code}")
            last = min(self.round, self.rounds) if self.rounds else self.round
            return f"peer {self.id}: {state} (round {last}, epoch {self.epoch:.2f})"
        if not self.rounds:                       # no plan record yet: loading data and the model
            return f"peer {self.id}: starting"
        bar = ""
        if self.epochs:
            done = min(20, int(20 * self.epoch / self.epochs))
            bar = f" [{'#' * done}{'.' * (20 - done)}]"
        loss = f"  loss {self.loss:.3f}" if self.loss is not None else ""
        acc = f"  acc {100 * self.accuracy:.1f}%" if self.accuracy is not None else ""
        return (f"peer {self.id}: epoch {self.epoch:5.2f}/{self.epochs:g}  step {self.step}/{self.steps or '?'}  "
                f"round {self.round}/{self.rounds or '?'} {self.phase:<8}{bar}{loss}{acc}")

    def poll_metrics(self, run_dir: Path) -> list[dict]:
        path = run_dir / f"metrics-{self.id}.jsonl"
        try:
            with open(path) as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[:chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        recs = []
        for line in complete.splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        for r in recs:
            self.round = r.get("round", self.round)
            if r["type"] == "plan":
                self.rounds, self.epochs, self.steps = r["rounds"], r["epochs"], r.get("total_steps", 0)
            elif r["type"] == "step":
                self.loss, self.epoch = r["loss"], r.get("epoch", self.epoch)
                self.step = r.get("global_step", self.step)
                self.phase = "train"
            elif r["type"] == "phase":
                self.phase = r["phase"]
            elif r["type"] == "round":
                self.epoch = r.get("epoch", self.epoch)
                if r.get("total"):
                    self.accuracy = r["correct"] / r["total"]
                    self.evaluations += 1
            elif r["type"] in ("fault", "event"):
                self.events.append(r)
        return recs


class Launcher:
    def __init__(self, cfg: config_mod.Config, run_dir: Path, restarts: dict[int, int], timeout_s: float = 0):
        self.cfg = cfg
        self.run_dir = run_dir
        self.restarts = restarts              # peer id -> round at which to restart it
        self.timeout_s = timeout_s
        self.views = {p.id: PeerView(p.id) for p in cfg.peers}
        self.tty = sys.stdout.isatty()
        self._drawn = 0
        self._last_plain: dict[int, tuple] = {}
        self.config_path = run_dir / "config.toml"

    def _start(self, peer_id: int, resume: bool = False) -> None:
        cmd = [sys.executable, "-m", "p2pfed", "peer", "--config", str(self.config_path), "--id", str(peer_id),
               "--run-dir", str(self.run_dir), "--quiet"] + (["--resume"] if resume else [])
        err = open(self.run_dir / f"peer-{peer_id}.stderr", "ab")
        self.views[peer_id].proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)
        err.close()
        self.views[peer_id].exit_code = None

    def run(self) -> int:
        from . import atomic
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.config_path, config_mod.dumps_toml(self.cfg))
        t = self.cfg.train
        length = f"{t.rounds} rounds" if t.rounds else f"{t.epochs:g} epochs"
        size = f"{list(t.local_steps)} local steps" if t.local_steps else f"{t.local_epochs:g} local epochs"
        print(f"p2pfed: {len(self.cfg.peers)} peers, {length} in rounds of {size}, data {self.cfg.data.dataset}, "
              f"run dir {self.run_dir}", flush=True)
        started = time.monotonic()
        interrupted = False
        # explicit handlers: a process started from a background job inherits SIGINT as ignored,
        # and Python then installs no KeyboardInterrupt handler of its own, so Ctrl-C did nothing
        old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for pid in self.views:
                self._start(pid)
            while True:
                self._poll()
                self._render()
                if all(v.proc.poll() is not None for v in self.views.values()) and not self._pending_restart():
                    break
                if self.timeout_s and time.monotonic() - started > self.timeout_s:
                    print(f"\np2pfed: giving up after --timeout-s {self.timeout_s:.0f} s; stopping all peers",
                          flush=True)
                    interrupted = True
                    break
                time.sleep(0.25)
        except KeyboardInterrupt:
            interrupted = True
            print("\np2pfed: interrupted; stopping all peers", flush=True)
        finally:
            self.stop_all()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        self._poll()
        self._render(final=True)
        return self._verdict(interrupted)

    def _pending_restart(self) -> bool:
        return any(pid in self.restarts and self.views[pid].restarts == 0 and self.views[pid].exit_code not in (None, 0)
                   for pid in self.views)

    def _poll(self) -> None:
        for v in self.views.values():
            v.poll_metrics(self.run_dir)
            if v.proc is not None and v.exit_code is None and v.proc.poll() is not None:
                v.exit_code = v.proc.returncode
        others = [v.round for v in self.views.values() if v.exit_code is None]
        for pid, at_round in self.restarts.items():
            v = self.views[pid]
            if v.exit_code not in (None, 0) and v.restarts == 0 and (not others or max(others) >= at_round):
                v.restarts += 1
                print(f"p2pfed: restarting peer {pid} with --resume (others at round {max(others, default='?')})",
                      flush=True)
                self._start(pid, resume=True)

    def _render(self, final: bool = False) -> None:
        lines = [v.line() for v in self.views.values()]
        if self.tty:
            out = (f"\x1b[{self._drawn}F" if self._drawn else "") + "".join(f"\x1b[2K{l}\n" for l in lines)
            sys.stdout.write(out)
            sys.stdout.flush()
            self._drawn = len(lines)
            return
        # plain output (a log): a line per peer every PLAIN_EVERY_S, at each evaluation and at exit
        now = time.monotonic()
        for v, line in zip(self.views.values(), lines):
            key = (v.evaluations, v.exit_code, v.restarts)
            last_key, last_t = self._last_plain.get(v.id, (None, -PLAIN_EVERY_S))
            if key != last_key or now - last_t >= PLAIN_EVERY_S:
                self._last_plain[v.id] = (key, now)
                print(line, flush=True)

    def stop_all(self) -> None:
        """SIGINT every live peer, wait GRACE_S, then SIGKILL; always reap."""
        live = [v.proc for v in self.views.values() if v.proc is not None and v.proc.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_S
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()

    def _verdict(self, interrupted: bool) -> int:
        """One of three outcomes, each pointing at summary.md: finished; finished, but some peers
        died; failed: no consensus."""
        summary = self.run_dir / "summary.json"
        if interrupted:
            print(f"p2pfed: run stopped; partial results in {self.run_dir}", flush=True)
            return ExitCode.INTERRUPTED
        logs = ", ".join(str(self.run_dir / f"peer-{v.id}.log") for v in self.views.values())
        if not summary.exists():
            print(f"p2pfed: failed: no consensus (no summary.json was written). See the peers' logs: {logs}",
                  flush=True)
            for v in self.views.values():
                why = _last_error(self.run_dir / f"peer-{v.id}.log")
                if why:
                    print(f"p2pfed:   peer {v.id}: {why}", flush=True)
            return ExitCode.FAILED
        s = json.loads(summary.read_text())
        acc = s["final"]["accuracy"]
        agree = all(r["digests_agree"] for r in s["rounds"])
        if not agree:
            bad = [r["round"] for r in s["rounds"] if not r["digests_agree"]]
            print(f"p2pfed: failed: no consensus: digests differed in rounds {bad[:10]}; see {logs}", flush=True)
            return ExitCode.FAILED
        died = [v for v in self.views.values() if v.exit_code not in (0, None)]
        result = (f"{len(s['rounds'])} rounds, final accuracy {'n/a' if acc is None else f'{100 * acc:.2f}%'}, "
                  f"digests agreed in every round: {agree}")
        if died:
            print(f"p2pfed: finished, but peers {[v.id for v in died]} died ("
                  + "; ".join(f"peer {v.id} {describe(v.exit_code)}" for v in died)
                  + f"). The consensus of the last round's members {s['final']['members']} was written: {result}",
                  flush=True)
        else:
            print(f"p2pfed: finished. {result}", flush=True)
        return ExitCode.OK


def _last_error(log_path: Path) -> str:
    """The message of the last ERROR line of a peer's log ("" if none): why that peer stopped."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    errors = [l for l in tail if " ERROR " in l]
    return errors[-1].split(": ", 1)[-1][:300] if errors else ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, run_dir = resolve_config(args)
        restarts = {}
        for spec in args.restart:
            who, _, rnd = spec.partition("@")
            try:
                restarts[int(who)] = int(rnd or 1)
            except ValueError:
                raise ConfigError(f"--restart {spec!r} must look like ID@ROUND, e.g. 2@3") from None
            if int(who) not in cfg.peer_ids:
                raise ConfigError(f"--restart {spec!r}: peer {who} does not exist (ids {cfg.peer_ids})")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    code = Launcher(cfg, run_dir, restarts, args.timeout_s).run()
    if args.report and any(run_dir.glob("metrics-*.jsonl")):   # a failed run gets its report too
        try:
            from . import report
            out = report.render(run_dir)
            print(f"p2pfed: report: {out}", flush=True)
        except Exception as e:  # the run succeeded; a plotting problem must not hide that
            print(f"p2pfed: warning: the report could not be rendered ({type(e).__name__}: {e}); "
                  f"run `p2pfed report {run_dir}` to retry", flush=True)
    if (run_dir / "summary.json").exists():
        print(f"p2pfed: run directory: {run_dir}\np2pfed: summary: {run_dir / 'summary.json'}"
              + (f" and {run_dir / 'summary.md'}" if (run_dir / "summary.md").exists() else ""), flush=True)
    return code
