"""Recovery: survivors going on without dead peers, and dead peers coming back by themselves.

    python -m bench.recovery [--peers 5] [--dead-after-s 1.5] [--srun] [--quick]

Part 1, survivors (small real runs: tiny MobileNetV2, synthetic data): no fault, 1 peer crashed
in the exchange of round 2, 2 peers crashed there. Recovery = from the fault record of the dying
peer to the last survivor's commit of round 2; baseline = from the first `exchange` record to the
last commit of round 2 in the run without faults, side by side.

Part 2, restarts: one peer dies of SIGKILL (as by the OOM killer) and of SIGABRT (as by libzmq's
assertion) at every fault point (train, exchange, between-rounds; with secure aggregation also
seed and reveal), plain and with secure aggregation, under launch.py (its supervisor, with its warm
spare) and, with --srun, under `srun --overcommit p2pfed peer --from-slurm --supervise` on a
one-node Slurm (.ci/slurm-one-node, started here if SLURM_CONF is not set). Per run, from the
metrics files of every peer and every life:
    restart_s      death (the fault record) -> the new life trains the federation's current round,
                   holding its consensus
    member_s       death -> the first committed round the peer is a member of again
    rejoin_rounds  rounds committed without it after its death
    lost_rounds    rounds of the plan that no peer committed (must be 0)
    double_commits rounds with two different committed digests over all peers and lives (must be 0)
    round_s        the run's median round time, so that restart_s has a baseline from the same run
Last line: RESULT dead_after_s=.. baseline_s=.. recover1_s=.. recover2_s=.. runs=.. restart_s=<max>
restart_median_s=.. member_s=<max> rejoin_rounds=<max> lost_rounds=<sum> double_commits=<sum>
restart_vs_round=<max of restart_s / round_s> [srun_restart_s=<max> srun_member_s=<max>]
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import harness
from p2pfed import config
from p2pfed.outputs import metrics
from p2pfed.run.launch.preflight import free_ports

ROOT = harness.ROOT
RUN_TIMEOUT_S = 600.0          # one small run (survivors or a restart)

SMALL = dict(data={"dataset": "synthetic", "synthetic_train": 1000, "synthetic_test": 300},
             model={"width_mult": 0.1},
             train={"batch_size": 32, "threads": 1, "optimizer": "adamw", "lr": 0.01, "lr_scaling": "none",
                    "schedule": "constant", "bn_pool_images": 128},
             output={"tensorboard": False})
POINTS = {False: ["train", "exchange", "between-rounds"],
          True: ["train", "exchange", "seed", "reveal", "between-rounds"]}
DEATH_ROUND = 3
SIGNAL_NAMES = {"kill": "SIGKILL", "abort": "SIGABRT"}


def write_config(tmp: Path, n: int, **sections) -> Path:
    cfg = config.replace_peers(config.Config(), config.local_peers(n, free_ports(n)))
    merged = {k: dict(v) for k, v in SMALL.items()}
    for k, v in sections.items():
        merged.setdefault(k, {}).update(v)
    merged.setdefault("output", {})["run_dir"] = str(tmp / "run")
    path = tmp / "peers.toml"
    path.write_text(config.dumps_toml(config.override(cfg, **merged)))
    return path


def records(run: Path, phase: str, rnd: int) -> list[float]:
    return [r["t"] for rs in metrics.read_run(run).values() for r in rs
            if r["type"] == "phase" and r["phase"] == phase and r["round"] == rnd]


# ---------------------------------------------------------------------------- part 1: survivors
def survivors_run(n: int, dead_after_s: float, kills: list[int]) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-recovery-"))
    path = write_config(tmp, n, train={"rounds": 3, "max_steps": 10, "local_epochs": 2.0},
                        averaging={"dead_after_s": dead_after_s, "heartbeat_interval_s": dead_after_s / 5})
    flags = ["--peers", str(n), "--config", str(path), "--no-report"]
    flags += [a for k in kills for a in ("--kill", f"{k}@2:exchange")]
    harness.launch(flags, tmp / "run", what=f"survivors run (killed: {kills or 'none'})", cwd=Path.cwd(),
                   timeout_s=RUN_TIMEOUT_S)
    recs = metrics.read_run(tmp / "run")
    faults = [r["t"] for rs in recs.values() for r in rs if r["type"] == "fault"]
    start = min(faults) if faults else min(records(tmp / "run", "exchange", 2))
    return max(records(tmp / "run", "eval", 2)) - start


# ---------------------------------------------------------------------------- part 2: restarts
def restart_run(n: int, rounds: int, action: str, point: str, secure: bool, srun_env: dict | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-restart-"))
    victim = n - 2
    path = write_config(tmp, n, train={"rounds": rounds, "local_steps": 8},
                        averaging={"heartbeat_interval_s": 0.2, "dead_after_s": 1.5, "startup_timeout_s": 60.0},
                        security={"secure_aggregation": secure}, output={"checkpoint_every": 1})
    path.write_text(path.read_text() + f'\n[[faults]]\npeer = {victim}\nround = {DEATH_ROUND}\nphase = "{point}"\n'
                                       f'action = "{action}"\n')
    run = tmp / "run"
    what = f"restart run ({SIGNAL_NAMES[action]} at {point}{', secagg' if secure else ''})"
    if srun_env is None:                # its exit code is reported, not checked: a peer died in it
        done = harness.launch(["--peers", str(n), "--config", str(path), "--no-report"], run, what=what,
                              cwd=Path.cwd(), timeout_s=RUN_TIMEOUT_S, check=False)
    else:
        cmd = ["srun", "-n", str(n), "--overcommit", "--wait=0", "--kill-on-bad-exit=0", f"--chdir={tmp}",
               sys.executable, "-m", "p2pfed", "peer", "--config", str(path), "--from-slurm", "--supervise",
               "--quiet", "--run-dir", str(run)]
        done = harness.run(cmd, run, what=what, cwd=Path.cwd(), env=srun_env, timeout_s=RUN_TIMEOUT_S, check=False)
    recs = metrics.read_run(run)
    mine = recs.get(victim, [])
    death = next(r["t"] for r in mine if r["type"] == "fault")
    after = [r for r in mine if r["t"] > death]
    back = next((r["t"] for r in after if r["type"] == "phase" and r["phase"] == "train"), None)
    member = next((r for r in after if r["type"] == "round"), None)
    digests: dict[int, set] = {}
    for rs in recs.values():
        for r in rs:
            if r["type"] == "round":
                digests.setdefault(r["round"], set()).add(r["digest"])
    first_missed = DEATH_ROUND + 1 if point == "between-rounds" else DEATH_ROUND
    commit_times = [r["t"] for r in recs.get(0, []) if r["type"] == "round"]      # peer 0 never dies here
    round_s = statistics.median([b - a for a, b in zip(commit_times, commit_times[1:])]) if len(commit_times) > 2 \
        else float("nan")
    return {"action": action, "point": point, "secure": secure, "code": done.returncode,
            "restart_s": (back - death) if back else None,
            "member_s": (member["t"] - death) if member else None,
            "rejoin_rounds": (member["round"] - first_missed) if member else None,
            "lost_rounds": len([r for r in range(1, rounds + 1) if r not in digests]),
            "double_commits": len([r for r, d in digests.items() if len(d) > 1]), "round_s": round_s}


def slurm_env(tmp: Path) -> tuple[dict, Path | None]:
    """The environment for srun: this one if SLURM_CONF is set, else a one-node cluster started here."""
    if os.environ.get("SLURM_CONF"):
        return dict(os.environ), None
    d = tmp / "slurm"
    out = subprocess.run([str(ROOT / ".ci" / "slurm-one-node"), "start", str(d)], capture_output=True, text=True,
                         check=True, timeout=120)
    assert "SLURM_CONF" in out.stdout, out.stderr
    return {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}, d


def restarts(args, srun_env: dict | None, label: str) -> list[dict]:
    rows = []
    for secure in (False, True):
        for point in POINTS[secure]:
            for action in ("kill", "abort") if not args.quick else ("abort",):
                r = restart_run(args.peers, args.rounds, action, point, secure, srun_env)
                rows.append(r)
                fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
                print(f"{label:7} {'secagg' if secure else 'plain':6} {SIGNAL_NAMES[action]:7} {point:14} "
                      f"exit {r['code']:4}  restart {fmt(r['restart_s'])} s  member again {fmt(r['member_s'])} s  "
                      f"rounds missed {r['rejoin_rounds']}  lost {r['lost_rounds']}  double {r['double_commits']}  "
                      f"round {fmt(r['round_s'])} s", flush=True)
    return rows


def worst(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows]
    return float("inf") if any(v is None for v in values) else max(values)


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--dead-after-s", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=9, help="rounds of each restart run (death in round 3)")
    ap.add_argument("--srun", action="store_true", help="also under srun on a (one-node) Slurm")
    ap.add_argument("--quick", action="store_true", help="SIGABRT only (half the restart runs)")
    args = ap.parse_args()
    base = survivors_run(args.peers, args.dead_after_s, [])
    r1 = survivors_run(args.peers, args.dead_after_s, [3])
    r2 = survivors_run(args.peers, args.dead_after_s, [1, 3])
    print(f"{args.peers} peers, tiny MobileNetV2, dead_after_s={args.dead_after_s}")
    print(f"round 2 without faults, first exchange to last commit: {base:.2f} s")
    print(f"1 peer killed mid-exchange, fault to last survivor's commit: {r1:.2f} s")
    print(f"2 peers killed mid-exchange, fault to last survivor's commit: {r2:.2f} s", flush=True)
    rows = restarts(args, None, "launch")
    srun_rows, cluster = [], None
    if args.srun:
        tmp = Path(tempfile.mkdtemp(prefix="p2pfed-slurm-"))
        env, cluster = slurm_env(tmp)
        try:
            srun_rows = restarts(args, env, "srun")
        finally:
            if cluster:
                subprocess.run([str(ROOT / ".ci" / "slurm-one-node"), "stop", str(cluster)], timeout=60)
    every = rows + srun_rows
    done = [r["restart_s"] for r in rows if r["restart_s"] is not None]
    ratio = max((r["restart_s"] / r["round_s"] for r in rows if r["restart_s"] and r["round_s"]), default=float("nan"))
    line = {"dead_after_s": args.dead_after_s, "baseline_s": f"{base:.2f}", "recover1_s": f"{r1:.2f}",
            "recover2_s": f"{r2:.2f}", "runs": len(every), "restart_s": f"{worst(rows, 'restart_s'):.2f}",
            "restart_median_s": f"{statistics.median(done) if done else float('nan'):.2f}",
            "member_s": f"{worst(rows, 'member_s'):.2f}", "rejoin_rounds": f"{worst(every, 'rejoin_rounds'):g}",
            "lost_rounds": sum(r["lost_rounds"] for r in every),
            "double_commits": sum(r["double_commits"] for r in every), "restart_vs_round": f"{ratio:.2f}"}
    if srun_rows:
        line |= {"srun_restart_s": f"{worst(srun_rows, 'restart_s'):.2f}",
                 "srun_member_s": f"{worst(srun_rows, 'member_s'):.2f}"}
    harness.result(line)


if __name__ == "__main__":
    main()
