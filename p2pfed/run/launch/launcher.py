"""`python launch.py --peers N`: start N local peer processes, show progress, reap them all.

The launcher is not a server: it checks what it can before any peer starts (preflight.py),
writes the resolved config, starts `p2pfed peer` subprocesses (no fork after torch or zmq are
imported), reads their metrics files for the live view (liveview.py), restarts a peer that
crashes (supervise.py's policy: back-off, a bound per peer; `--no-restart` turns it off) and one
that --kill crashed if asked (`--restart ID@ROUND`), forwards Ctrl-C, reaps every child, and
renders the report.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from ... import config as config_mod
from ...config import ConfigError
from ...outputs import atomic, metrics
from . import preflight, sites
from ..exitcodes import ExitCode, describe
from .flags import options
from .liveview import LiveView, PeerView
from .spare import Spare
from .supervise import RestartPolicy, Stay, decide

GRACE_S = 10.0           # after Ctrl-C, how long peers get to exit before SIGKILL
POLL_S = 0.25            # how often the launcher reads the metrics files and checks its children


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Launcher:
    def __init__(self, cfg: config_mod.Config, run_dir: Path, restarts: dict[int, int], timeout_s: float = 0,
                 gpus: list[int] | None = None, watch_port: int | None = None,
                 policy: RestartPolicy | None = RestartPolicy()):
        self.cfg = cfg
        self.policy = policy                  # restarts of crashed peers (None: --no-restart)
        self.spare: Spare | None = None       # a warm spare for the next restart (spare.py)
        self.watch_port = watch_port          # --watch: serve the live page while the run lasts
        self.gpus = gpus or []                # --gpus: peer k on GPU gpus[k mod len]; else train.device
        self.run_dir = run_dir
        self.restarts = restarts              # peer id -> round at which to restart it
        self.timeout_s = timeout_s
        self.views = {p.id: PeerView(p.id) for p in cfg.peers}
        self.live = LiveView(self.views, tested_on="the sites' own test folders, pooled"
                             if cfg.data.partition == "own" else "the test split")
        self.config_path = run_dir / "config.toml"

    def _start(self, peer_id: int, resume: bool = False) -> None:
        v = self.views[peer_id]
        cmd = [sys.executable, "-m", "p2pfed", "peer", "--config", str(self.config_path), "--id", str(peer_id),
               "--run-dir", str(self.run_dir), "--quiet"] + (["--resume"] if resume else [])
        if v.restarts and v.exit_code is not None:
            cmd += ["--life", str(v.restarts + 1), "--last-exit", str(v.exit_code)]
        if self.gpus:
            cmd += ["--device", f"cuda:{self.gpus[self.cfg.peer_ids.index(peer_id) % len(self.gpus)]}"]
        v.started_at, v.restart_at, v.exit_code = time.monotonic(), None, None
        v.rounds = 0        # until this life's plan record: it has not got going, and no new spare starts
        stderr = self.run_dir / f"peer-{peer_id}.stderr"
        if resume and self.spare is not None and self.spare.alive():
            spare, self.spare = self.spare, None
            try:
                v.proc = spare.become(cmd[3:], stderr=stderr)
                return
            except OSError:                   # it died: start the peer the usual way
                spare.close()
        with open(stderr, "ab") as err:
            v.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                      start_new_session=True)

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.config_path, config_mod.dumps_toml(self.cfg))
        t = self.cfg.train
        length = f"{t.rounds} rounds" if t.rounds else f"{t.epochs:g} epochs"
        size = f"{list(t.local_steps)} local steps" if t.local_steps else f"{t.local_epochs:g} local epochs"
        print(f"p2pfed: {len(self.cfg.peers)} peers, {length} in rounds of {size}, data {self.cfg.data.dataset}, "
              f"run dir {self.run_dir}", flush=True)
        self._say_how_to_watch()
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
                self.live.render()
                if all(v.proc.poll() is not None for v in self.views.values()) and not self._pending_restart():
                    break
                if self.timeout_s and time.monotonic() - started > self.timeout_s:
                    print(f"\np2pfed: giving up after --timeout-s {self.timeout_s:.0f} s; stopping all peers",
                          flush=True)
                    interrupted = True
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            interrupted = True
            print("\np2pfed: interrupted; stopping all peers", flush=True)
        finally:
            self.stop_all()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            if self.watcher:
                self.watcher.close()
        self._poll()
        self.live.render()
        return self._verdict(interrupted)

    watcher = None

    def _say_how_to_watch(self) -> None:
        """--watch starts the live page; either way, one line says how to watch the run."""
        o = self.cfg.output
        if self.watch_port is not None:
            from ..observe import watch
            self.watcher = watch.serve(watch.RunDirSource(self.run_dir), self.watch_port)
            page = f"live page {self.watcher.url}/"
        else:
            page = f"live page: p2pfed watch {self.run_dir}"
        tb = f"; TensorBoard: tensorboard --logdir {self.run_dir / 'tb'}" if o.tensorboard else ""
        host = "127.0.0.1" if o.metrics_bind in ("0.0.0.0", "::") else o.metrics_bind
        metrics = (f"; Prometheus: http://{host}:{o.metrics_port}..{o.metrics_port + len(self.cfg.peers) - 1}"
                   f"/metrics" if o.metrics_port else "")
        print(f"p2pfed: {page}{tb}{metrics}", flush=True)

    def _pending_restart(self) -> bool:
        return any((pid in self.restarts and v.restarts == 0 and v.exit_code not in (None, 0))
                   or v.restart_at is not None for pid, v in self.views.items())

    def _poll(self) -> None:
        ended = []
        for v in self.views.values():
            v.poll(self.run_dir)
            if v.proc is not None and v.exit_code is None and v.proc.poll() is not None:
                v.exit_code = v.proc.returncode
                ended.append(v)
        for v in ended:                       # after every exit code of this poll is known
            self._died(v)
        if self.policy is not None and self.spare is None and all(v.rounds for v in self.views.values()):
            self.spare = Spare()              # once every peer is going, so that it slows no start
        now = time.monotonic()
        for v in self.views.values():
            if v.restart_at is not None and now >= v.restart_at:
                v.restarts += 1
                self._start(v.id, resume=True)
        others = [v.round for v in self.views.values() if v.exit_code is None]
        for pid, at_round in self.restarts.items():
            v = self.views[pid]
            if v.exit_code not in (None, 0) and v.restarts == 0 and (not others or max(others) >= at_round):
                v.restarts += 1
                print(f"p2pfed: restarting peer {pid} with --resume (others at round {max(others, default='?')})",
                      flush=True)
                self._start(pid, resume=True)

    def _died(self, v: PeerView) -> None:
        """A peer process ended: restart it by the policy if it crashed, with a line that says so."""
        if self.policy is None or v.exit_code == 0:
            return
        lived = time.monotonic() - v.started_at
        if len(self.views) > 1 and all(o.exit_code is not None and o.restart_at is None
                                       for o in self.views.values() if o is not v):
            verdict = Stay("every other peer has ended")
        else:
            verdict = decide(self.policy, v.exit_code, lived, bool(v.rounds), v.restarts, v.last_delay)
        if isinstance(verdict, Stay):
            if v.exit_code not in (0, ExitCode.INJECTED_CRASH, ExitCode.INTERRUPTED, ExitCode.TERMINATED):
                print(f"\np2pfed: peer {v.id} {describe(v.exit_code)} in round {v.round}; not restarting it: "
                      f"{verdict.reason}", flush=True)
            return
        v.restart_at, v.last_delay = time.monotonic() + verdict.delay_s, verdict.delay_s
        print(f"\np2pfed: peer {v.id} {describe(v.exit_code)} in round {v.round} after {lived:.1f} s; restarting it "
              f"with --resume in {verdict.delay_s:.1f} s (restart {v.restarts + 1} of at most "
              f"{self.policy.max_restarts}; --no-restart leaves it dead)", flush=True)

    def stop_all(self) -> None:
        """SIGINT every live peer, wait GRACE_S, then SIGKILL; always reap (the spare too)."""
        if self.spare is not None:
            self.spare.close()
            self.spare = None
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
            said: dict[str, list[int]] = {}        # peers that stopped for one reason share a line
            for v in self.views.values():
                why = _last_error(self.run_dir / f"peer-{v.id}.log")
                if why:
                    said.setdefault(why, []).append(v.id)
            for why, ids in said.items():
                who = f"peer {ids[0]}" if len(ids) == 1 else f"peers {', '.join(map(str, ids))}"
                print(f"p2pfed:   {who}: {why}", flush=True)
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
        back = [v for v in self.views.values() if v.restarts]
        if back:
            result += ". Restarted after a crash: " + ", ".join(
                f"peer {v.id} ({v.restarts} time{'s' if v.restarts > 1 else ''})" for v in back)
        if died:
            print(f"p2pfed: finished, but peers {[v.id for v in died]} died ("
                  + "; ".join(f"peer {v.id} {describe(v.exit_code)}" for v in died)
                  + f"). The consensus of the last round's members {s['final']['members']} was written: {result}",
                  flush=True)
        else:
            print(f"p2pfed: finished. {result}", flush=True)
        return ExitCode.OK


def _trained(run_dir: Path) -> bool:
    """Some peer took a training step in this run (its metrics file has a `step` record)."""
    return any(r.get("type") == "step" for recs in metrics.read_run(run_dir).values() for r in recs)


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


# ---------------------------------------------------------------------------- the command
def _int_list(flag: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be an integer or a comma-separated list, e.g. 4 or 2,4,8") from None


def resolve_config(o: dict) -> tuple[config_mod.Config, Path, dict[int, int]]:
    """The run's config (base file, preset, flags, local peers, faults), its run dir, and the
    restarts: raises ConfigError naming the flag or key."""
    from .presets import PRESETS
    base_path = o["config"] or ("peers.toml" if Path("peers.toml").exists() else None)
    cfg = config_mod.load(base_path) if base_path else config_mod.Config()
    if o["preset"]:
        cfg = config_mod.override(cfg, **PRESETS[o["preset"]])
    run_dir = Path(o["run_dir"] or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    # own data (one --data-dir per peer, --partition own, or the config's): sites.own_folders sets it up below
    own = len(o["data_dir"]) > 1 or o["partition"] == "own" or cfg.data.partition == "own"
    configured = [p.data_dir for p in sorted(cfg.peers, key=lambda p: p.id)]
    cfg = config_mod.override(
        cfg,
        train={"epochs": o["epochs"], "rounds": o["rounds"], "local_epochs": o["local_epochs"],
               "local_steps": _int_list("--local-steps", o["local_steps"]), "eval_every": o["eval_every"],
               "batch_size": o["batch_size"], "max_steps": o["max_steps"], "threads": o["threads"],
               "round_target": o["round_target"], "round_deadline_s": o["round_deadline_s"]},
        data={"dataset": o["dataset"], "data_dir": o["data_dir"][0] if len(o["data_dir"]) == 1 else None,
              "partition": None if own else o["partition"], "alpha": o["alpha"],
              "seed": o["seed"], "train_limit": o["train_limit"], "test_limit": o["test_limit"]},
        model={"width_mult": o["width_mult"]},
        security={"secure_aggregation": o["secure_aggregation"]},
        output={"run_dir": str(run_dir), "quantize": o["quantize"], "metrics_port": o["metrics_port"],
                "tensorboard": o["tensorboard"]})
    cfg = config_mod.replace_peers(cfg, config_mod.local_peers(o["peers"], preflight.free_ports(o["peers"])))
    if own:
        dirs = list(o["data_dir"]) or ([d for d in configured] if len(configured) == o["peers"] and all(configured)
                                       else [])
        cfg = sites.own_folders(cfg, dirs, o["partition"])
    if cfg.averaging.min_peers == 0:
        # all peers share one host, so a partition is impossible: any survivors may finish a round
        # (under secure aggregation, any three: a round of two would show each its partner's update)
        least = config_mod.SECURE_MIN_MEMBERS if cfg.security.secure_aggregation else 1
        cfg = config_mod.override(cfg, averaging={"min_peers": least})
    faults = [config_mod.parse_fault(s, "crash") for s in o["kill"]]
    faults += [config_mod.parse_fault(s, "stall") for s in o["stall"]]
    faults += [config_mod.parse_slow(s) for s in o["slow"]]
    faults += [config_mod.parse_fault(s, "kill") for s in o["sigkill"]]
    faults += [config_mod.parse_fault(s, "abort") for s in o["sigabrt"]]
    cfg = config_mod.replace_faults(cfg, cfg.faults + tuple(faults))
    restarts = {}
    for spec in o["restart"]:
        who, _, rnd = spec.partition("@")
        try:
            restarts[int(who)] = int(rnd or 1)
        except ValueError:
            raise ConfigError(f"--restart {spec!r} must look like ID@ROUND, e.g. 2@3") from None
        if int(who) not in cfg.peer_ids:
            raise ConfigError(f"--restart {spec!r}: peer {who} does not exist (ids {cfg.peer_ids})")
    return cfg, run_dir, restarts


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@options
def launch(**o) -> int:
    """Run N p2pfed peers on this machine."""
    cfg, run_dir, restarts = resolve_config(o)
    preflight.check_all(cfg, run_dir)
    preflight.check_watch_port(o["watch_port"])
    policy = None if o["no_restart"] else RestartPolicy(max_restarts=o["max_restarts"])
    code = Launcher(cfg, run_dir, restarts, o["timeout_s"], _int_list("--gpus", o["gpus"]),
                    watch_port=o["watch_port"], policy=policy).run()
    if o["report"] and _trained(run_dir):   # a failed run gets its report too, one that never started none
        try:
            from ...outputs import report
            print(f"p2pfed: report: {report.render(run_dir)}", flush=True)
        except Exception as e:  # the run succeeded; a plotting problem must not hide that
            print(f"p2pfed: warning: the report could not be rendered ({type(e).__name__}: {e}); "
                  f"run `p2pfed report {run_dir}` to retry", flush=True)
    if (run_dir / "summary.json").exists():
        print(f"p2pfed: run directory: {run_dir}\np2pfed: summary: {run_dir / 'summary.json'}"
              + (f" and {run_dir / 'summary.md'}" if (run_dir / "summary.md").exists() else ""), flush=True)
    return code


def parse_args(argv: list[str]) -> dict:
    """The options of a launch.py command line, parsed but not run."""
    return launch.make_context("launch.py", list(argv)).params


def main(argv: list[str] | None = None) -> int:
    """launch.py and `p2pfed launch`: a usage mistake is one line naming the flag or key, exit 2."""
    try:
        return launch.main(args=argv, prog_name="launch.py", standalone_mode=False)
    except click.exceptions.Exit as e:            # --help
        return e.exit_code
    except click.ClickException as e:             # a bad flag: click names it
        print(f"error: {e.format_message()}", file=sys.stderr)
        return ExitCode.USAGE
    except ConfigError as e:                      # a bad value, key, file, path or port
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USAGE
