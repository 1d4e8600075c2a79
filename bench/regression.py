"""The default recipe on the loopback: this checkout against an earlier commit, side by side.

Checks out BASE (a git ref) into a temporary worktree and runs the same small training
(launch.py with its defaults) from both trees, alternating base, head, base, head, ... so that
the machine's noise falls on both alike. Each run imports the p2pfed of its own tree.

    python -m bench.regression --base 7266b24 [--repeats 2] [--data ../shared/data/cifar10-dev.tar.xz]
                               [--peers 5] [--train-limit 10000] [--epochs 3] [--width-mult 0.5]

Prints each run's wall time, rounds and final accuracy on the dev test split, and ends with
RESULT head_vs_base=.. acc_delta_pts=.. (the ratio of the median wall times, head over base; the
mean accuracy of head minus base's, in points).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench import harness

ROOT = harness.ROOT
GIT_TIMEOUT_S = 300


def run(args, tree: Path, out_dir: Path) -> dict:
    flags = ["--peers", str(args.peers), "--dataset", "folder", "--data-dir", args.data, "--train-limit",
             str(args.train_limit), "--epochs", str(args.epochs), "--width-mult", str(args.width_mult), "--no-report",
             "--no-quantize"]
    env = {**os.environ, "PYTHONPATH": str(tree)}        # the peers import this tree's p2pfed
    wall = harness.launch(flags, out_dir, what=f"{tree} run", cwd=tree, tree=tree, env=env).wall_s
    s = harness.summary(out_dir)
    return {"wall_s": wall, "acc": s["final"]["accuracy"], "rounds": len(s["rounds"])}


def main() -> None:
    ap = harness.small_run_parser(__doc__)
    ap.add_argument("--base", required=True, help="the git ref to compare against, e.g. a commit before a change")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each tree, alternating")
    args = ap.parse_args()
    args.data = str(Path(args.data).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-regression-"))
    base_tree = tmp / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree), args.base], check=True,
                   timeout=GIT_TIMEOUT_S)
    try:
        commit = subprocess.run(["git", "-C", str(base_tree), "rev-parse", "--short", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=GIT_TIMEOUT_S).stdout.strip()
        print(f"{args.peers} peers, {args.train_limit} images, {args.epochs:g} epochs, width {args.width_mult}; "
              f"base {args.base} ({commit}) against {ROOT}; runs in {tmp}", flush=True)
        res: dict[str, list[dict]] = {"base": [], "head": []}
        for i in range(args.repeats):
            for name, tree in (("base", base_tree), ("head", ROOT)):
                r = run(args, tree, tmp / f"{name}-{i}")
                res[name].append(r)
                print(f"{name} #{i + 1}  wall {r['wall_s']:6.1f} s  rounds {r['rounds']}  "
                      f"accuracy {100 * r['acc']:6.2f}%", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False,
                       timeout=GIT_TIMEOUT_S)
    wall = {k: statistics.median(r["wall_s"] for r in v) for k, v in res.items()}
    acc = {k: statistics.mean(r["acc"] for r in v) for k, v in res.items()}
    harness.result({"head_vs_base": f"{wall['head'] / wall['base']:.3f}",
                    "acc_delta_pts": f"{100 * (acc['head'] - acc['base']):+.2f}", "base_s": f"{wall['base']:.0f}",
                    "head_s": f"{wall['head']:.0f}", "base_acc": f"{100 * acc['base']:.2f}",
                    "head_acc": f"{100 * acc['head']:.2f}"})


if __name__ == "__main__":
    main()
