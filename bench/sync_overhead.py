"""Share of a peer's wall time not spent in training steps, at several round sizes k.

    python -m bench.sync_overhead [--data ../shared/data/cifar10-dev.tar.xz] [--ks 1 4 16]
                                  [--epochs 1] [--train-limit 0] [--width-mult 1.0]

For each k: `launch.py --peers 5` on the dev CIFAR-10 for --epochs epochs in rounds of k local
steps (batch and recipe: the defaults), then from each peer's metrics: the time from its first
training step to its last commit, the part of it spent in training steps, and the rest split
into sync (ready -> commit: waiting for the slowest peer, group, all-reduce, agreement),
evaluation, and bookkeeping (checkpoints, metrics, reports). Also each peer's peak RSS.
The runs execute one after another in this one process, so the ratios are comparable.
Last line: RESULT k=.. overhead_pct=.. (per k) peak_rss_mb=..
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from bench import harness


def measure(run: Path) -> dict:
    from p2pfed.outputs import metrics
    per_peer = []
    for pid, recs in metrics.read_run(run).items():
        steps = [r for r in recs if r["type"] == "phase" and r["phase"] == "train"]
        rounds = [r for r in recs if r["type"] == "round"]
        if not steps or not rounds:
            continue
        wall = rounds[-1]["t"] - steps[0]["t"]
        train = sum(r["train_s"] for r in rounds)
        sync = sum(r["sync_s"] for r in rounds)
        evals = sum(r.get("eval_s", 0.0) for r in rounds)
        rss = next((r["peak_rss_mb"] for r in recs if r["type"] == "exit"), float("nan"))
        per_peer.append({"wall": wall, "train": train, "sync": sync, "eval": evals,
                         "other": wall - train - sync - evals, "rss": rss, "rounds": len(rounds),
                         "averaging": statistics.median(r["averaging_s"] for r in rounds)})
    return {k: statistics.mean(p[k] for p in per_peer) for k in per_peer[0]} | \
        {"rss_max": max(p["rss"] for p in per_peer)}


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_data_flag(ap)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--peers", type=int, default=5)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="p2pfed-sync-") as tmp:
        for k in args.ks:
            run = Path(tmp) / f"k{k}"
            flags = ["--peers", str(args.peers), "--dataset", "folder", "--data-dir", args.data, "--epochs",
                     str(args.epochs), "--local-steps", str(k), "--width-mult", str(args.width_mult), "--no-report",
                     "--no-quantize"]
            if args.train_limit:
                flags += ["--train-limit", str(args.train_limit)]
            harness.launch(flags, run, what=f"k={k}: launch.py", cwd=Path(tmp))
            m = results[k] = measure(run)
            print(f"k={k:<3} rounds {m['rounds']:.0f}  wall {m['wall']:7.1f} s  train {100 * m['train'] / m['wall']:5.1f}%"
                  f"  sync {100 * m['sync'] / m['wall']:5.1f}%  eval {100 * m['eval'] / m['wall']:4.1f}%"
                  f"  other {100 * m['other'] / m['wall']:4.1f}%  averaging (median, group->commit) "
                  f"{1000 * m['averaging']:.0f} ms  peak RSS {m['rss']:.0f} MB (max {m['rss_max']:.0f})",
                  flush=True)
    harness.result({f"k{k}_overhead_pct": f"{100 * (1 - m['train'] / m['wall']):.1f}" for k, m in results.items()}
                   | {"peak_rss_mb": f"{max(m['rss_max'] for m in results.values()):.0f}"})


if __name__ == "__main__":
    main()
