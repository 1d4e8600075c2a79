"""One slow peer against none: 5 peers, one of them at a third of its speed (launch.py --slow),
against 5 equally fast peers, at equal total samples (the same rounds, each of peers x k x
batch_size images), one run after the other on the same data. Three runs:

    fast          5 equally fast peers, the default rounds (every member takes k steps)
    slow-steps    one slow peer, the default rounds: every round waits for it
    slow-samples  one slow peer, --round-target samples: each round's images are shared out by
                  measured speed, so the slow peer takes smaller batches (learning/balance.py)

    python -m bench.stragglers [--data ../shared/data/cifar10-dev.tar.xz] [--peers 5]
                               [--train-limit 10000] [--epochs 3] [--width-mult 0.5] [--slow 4x3]

Prints wall time, final accuracy on the dev test split and the median time from ready to commit
for each run, and ends with RESULT slow_vs_fast=.. acc_delta_pts=.. slow_steps_vs_fast=..
steps_acc_delta_pts=.. (wall-time ratios to the fast run; accuracy minus the fast run's, in
points; slow_vs_fast is the sample-target run). The slow peer is made slow by sleeping
(factor - 1) x each step's time, so on a machine with fewer cores than peers its idle time goes
to the others: there the federation loses little throughput, and the ratio can be below the
peers / (peers - 1 + 1/factor) that is ideal on separate machines.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench import harness


def run(args, tmp: Path, name: str, extra: list[str]) -> dict:
    out_dir = tmp / name
    flags = ["--peers", str(args.peers), "--dataset", "folder", "--data-dir", args.data, "--train-limit",
             str(args.train_limit), "--epochs", str(args.epochs), "--width-mult", str(args.width_mult), "--no-report",
             "--no-quantize", *extra]
    wall = harness.launch(flags, out_dir, what=name, cwd=tmp).wall_s
    s = harness.summary(out_dir)
    sync = sorted(harness.sync_s(r) for r in s["rounds"])
    return {"wall_s": wall, "acc": s["final"]["accuracy"], "rounds": len(s["rounds"]),
            "sync_median_s": sync[len(sync) // 2], "faults": [f["handled"] for f in s["faults"]]}


def main() -> None:
    ap = harness.small_run_parser(__doc__)
    ap.add_argument("--slow", default="4x3", help="launch.py --slow of the slow run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-stragglers-"))
    print(f"{args.peers} peers, {args.train_limit} images, {args.epochs:g} epochs, width {args.width_mult}; "
          f"slow run: --slow {args.slow}; runs in {tmp}", flush=True)
    res = {}
    for name, extra in (("fast", []), ("slow-steps", ["--slow", args.slow]),
                        ("slow-samples", ["--slow", args.slow, "--round-target", "samples"])):
        r = res[name] = run(args, tmp, name, extra)
        print(f"{name:<12} wall {r['wall_s']:6.0f} s  accuracy {100 * r['acc']:6.2f}%  rounds {r['rounds']}  "
              f"ready->commit median {r['sync_median_s']:.3f} s  {'; '.join(r['faults'])}", flush=True)
    fast = res["fast"]

    def vs(name):
        return res[name]["wall_s"] / fast["wall_s"], 100 * (res[name]["acc"] - fast["acc"])
    (ratio, delta), (steps_ratio, steps_delta) = vs("slow-samples"), vs("slow-steps")
    harness.result({"slow_vs_fast": f"{ratio:.2f}", "acc_delta_pts": f"{delta:+.2f}",
                    "slow_steps_vs_fast": f"{steps_ratio:.2f}", "steps_acc_delta_pts": f"{steps_delta:+.2f}"})


if __name__ == "__main__":
    main()
