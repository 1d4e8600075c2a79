"""Federated (5 IID peers, 5 Dirichlet(0.5) peers) against centralized training, at equal epochs,
one run after another in this one process.

    python -m bench.fed_vs_central [--data ../shared/data/cifar10-dev.tar.xz] [--epochs E]
                                   [--peers 5] [--train-limit N] [--width-mult W] [--runs iid,dirichlet,central]

Every run uses the defaults of peers.toml's recipe (or --config), the same epochs and the same
global batch (peers x batch_size; the centralized run trains on the union at that batch).
Accuracies are on the dev test split (cifar10-dev/test), after each epoch; the federated ones
are the consensus with pooled BatchNorm statistics. Prints the curves and each run's wall time.
Last line: RESULT iid_acc=.. dirichlet_acc=.. central_acc=.. iid_vs_central=.. dirichlet_vs_iid=..
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import harness


def federated(args, run: Path, partition: str) -> list[tuple[float, float]]:
    flags = ["--peers", str(args.peers), "--dataset", "folder", "--data-dir", args.data, "--partition", partition,
             "--alpha", "0.5", "--epochs", str(args.epochs), "--no-report", "--no-quantize"]
    flags += ["--config", args.config] if args.config else []
    flags += ["--train-limit", str(args.train_limit)] if args.train_limit else []
    flags += ["--width-mult", str(args.width_mult)] if args.width_mult else []
    harness.launch(flags, run, what=f"{partition} run", cwd=run.parent)
    s = harness.summary(run)
    return [(e["epoch"], e["accuracy"]) for e in s["evaluations"]]


def central(args, run: Path) -> list[tuple[float, float]]:
    from p2pfed import config
    from p2pfed.run.launch import launcher
    cfg, _, _ = launcher.resolve_config(launcher.parse_args(
        ["--peers", str(args.peers), "--dataset", "folder", "--data-dir", args.data, "--epochs", str(args.epochs),
         "--run-dir", str(run)] + (["--config", args.config] if args.config else [])
        + (["--train-limit", str(args.train_limit)] if args.train_limit else [])
        + (["--width-mult", str(args.width_mult)] if args.width_mult else [])))
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text(config.dumps_toml(cfg))
    harness.centralized(["--config", str(run / "config.toml")], run)
    return [(r["epoch"], r["correct"] / r["total"]) for r in harness.central_rounds(run)]


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_data_flag(ap)
    ap.add_argument("--config", default="", help="base config (default: the built-in defaults)")
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--width-mult", type=float, default=0.0)
    ap.add_argument("--runs", default="iid,dirichlet,central")
    args = ap.parse_args()
    curves, walls = {}, {}
    with tempfile.TemporaryDirectory(prefix="p2pfed-fvc-") as tmp:
        for name in args.runs.split(","):
            t0 = time.monotonic()
            run = Path(tmp) / name
            curves[name] = central(args, run) if name == "central" else federated(args, run, name)
            walls[name] = time.monotonic() - t0
            print(f"{name:10s} wall {walls[name]:7.0f} s  accuracy by epoch: "
                  + "  ".join(f"{e:.2f}:{100 * a:.2f}%" for e, a in curves[name]), flush=True)
    final = {k: v[-1][1] if v else float("nan") for k, v in curves.items()}
    fields = {f"{k}_acc": f"{100 * v:.2f}" for k, v in final.items()}
    if "iid" in final and "central" in final:
        fields["iid_vs_central"] = f"{100 * (final['iid'] - final['central']):+.2f}"
    if "iid" in final and "dirichlet" in final:
        fields["dirichlet_vs_iid"] = f"{100 * (final['dirichlet'] - final['iid']):+.2f}"
    print(f"dev test split, {args.epochs:g} epochs, {args.peers} peers" +
          (f", {args.train_limit} training images" if args.train_limit else ""))
    harness.result(fields)


if __name__ == "__main__":
    main()
