"""Recovery time after peers die mid-exchange, against the same round without a fault, side by side.

    python bench/recovery.py [--peers 5] [--dead-after-s 1.5]

Runs three small real runs (tiny MobileNetV2, synthetic data): no fault, 1 peer killed in the
exchange of round 2, 2 peers killed there. Recovery = from the fault record of the dying peer to
the last survivor's commit of round 2 (its `eval` phase record). Baseline = from the first `exchange`
record to the last `eval` record of round 2 in the run without faults.
Last line: RESULT dead_after_s=.. baseline_s=.. recover1_s=.. recover2_s=.. (seconds, wall clock)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def one_run(n: int, dead_after_s: float, kills: list[int]) -> tuple[float, float | None]:
    from helpers import make_config
    from p2pfed.outputs import metrics
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-recovery-"))
    make_config(tmp, n, train={"rounds": 3, "max_steps": 10, "local_epochs": 2.0},
                averaging={"dead_after_s": dead_after_s, "heartbeat_interval_s": dead_after_s / 5})
    cmd = [sys.executable, str(ROOT / "launch.py"), "--peers", str(n), "--config", str(tmp / "peers.toml"),
           "--run-dir", str(tmp / "run"), "--no-report"] + [a for k in kills for a in ("--kill", f"{k}@2:exchange")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=600)
    recs = metrics.read_run(tmp / "run")
    evals = [r["t"] for rs in recs.values() for r in rs if r["type"] == "phase" and r["phase"] == "eval"
             and r["round"] == 2]
    exch = [r["t"] for rs in recs.values() for r in rs if r["type"] == "phase" and r["phase"] == "exchange"
            and r["round"] == 2]
    faults = [r["t"] for rs in recs.values() for r in rs if r["type"] == "fault"]
    start = min(faults) if faults else min(exch)
    return max(evals) - start, (min(faults) if faults else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--dead-after-s", type=float, default=1.5)
    args = ap.parse_args()
    base, _ = one_run(args.peers, args.dead_after_s, [])
    r1, _ = one_run(args.peers, args.dead_after_s, [3])
    r2, _ = one_run(args.peers, args.dead_after_s, [1, 3])
    print(f"{args.peers} peers, tiny MobileNetV2, dead_after_s={args.dead_after_s}")
    print(f"round 2 without faults, first exchange to last commit: {base:.2f} s")
    print(f"1 peer killed mid-exchange, fault to last survivor's commit: {r1:.2f} s")
    print(f"2 peers killed mid-exchange, fault to last survivor's commit: {r2:.2f} s")
    print(f"RESULT dead_after_s={args.dead_after_s} baseline_s={base:.2f} recover1_s={r1:.2f} recover2_s={r2:.2f}")


if __name__ == "__main__":
    main()
