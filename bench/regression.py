"""The default recipe on the loopback: this checkout against an earlier commit, side by side.

Checks out BASE (a git ref) into a temporary worktree and runs the same small training
(launch.py with its defaults) from both trees, alternating base, head, base, head, ... so that
the machine's noise falls on both alike. Each run imports the p2pfed of its own tree.

    python bench/regression.py --base 7266b24 [--repeats 2] [--data ../shared/data/cifar10-dev.tar.xz]
                               [--peers 5] [--train-limit 10000] [--epochs 3] [--width-mult 0.5]

Prints each run's wall time, rounds and final accuracy on the dev test split, and ends with
RESULT head_vs_base=.. acc_delta_pts=.. (the ratio of the median wall times, head over base; the
mean accuracy of head minus base's, in points).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import smallrun  # noqa: E402


def run(args, tree: Path, out_dir: Path) -> dict:
    cmd = [sys.executable, str(tree / "launch.py"), "--peers", str(args.peers), "--dataset", "folder",
           "--data-dir", args.data, "--train-limit", str(args.train_limit), "--epochs", str(args.epochs),
           "--width-mult", str(args.width_mult), "--run-dir", str(out_dir), "--no-report", "--no-quantize"]
    env = {**os.environ, "PYTHONPATH": str(tree)}        # the peers import this tree's p2pfed
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"{tree} run failed ({res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-2000:]}")
    s = json.loads((out_dir / "summary.json").read_text())
    return {"wall_s": wall, "acc": s["final"]["accuracy"], "rounds": len(s["rounds"])}


def main() -> None:
    ap = smallrun.parser(__doc__)
    ap.add_argument("--base", required=True, help="the git ref to compare against, e.g. a commit before a change")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each tree, alternating")
    args = ap.parse_args()
    args.data = str(Path(args.data).resolve())
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-regression-"))
    base_tree = tmp / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree), args.base], check=True)
    try:
        commit = subprocess.run(["git", "-C", str(base_tree), "rev-parse", "--short", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
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
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
    wall = {k: statistics.median(r["wall_s"] for r in v) for k, v in res.items()}
    acc = {k: statistics.mean(r["acc"] for r in v) for k, v in res.items()}
    print(f"RESULT head_vs_base={wall['head'] / wall['base']:.3f} acc_delta_pts={100 * (acc['head'] - acc['base']):+.2f} "
          f"base_s={wall['base']:.0f} head_s={wall['head']:.0f} base_acc={100 * acc['base']:.2f} "
          f"head_acc={100 * acc['head']:.2f}")


if __name__ == "__main__":
    main()
