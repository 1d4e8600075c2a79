"""Accuracy against wall time: the default 5-peer run, candidate recipes, and the centralized run of
the default recipe, one after another in this one process.

    python -m bench.time_to_accuracy [--data ../shared/data/cifar10-dev.tar.xz] [--peers 5]
                                     [--partition iid|dirichlet] [--alpha 0.5]
                                     [--runs default,previous,central] [--train-limit N] [--epochs-scale F]
                                     [--budget-s 1200] [--plot docs/time-to-accuracy.png] [--keep DIR [--reuse]]

Runs (each a real launch.py run on the dev data, IID partitions unless --partition says otherwise,
or `p2pfed centralized`):
    default    the built-in defaults (the `cpu` preset)
    previous   width 1.0, 8 epochs, lr 0.05 (the default until issue 26)
    w1e6       width 1.0, 6 epochs (the old model in the same time budget)
    w05e11     width 0.5, 11 epochs, peak lr 0.1, the first half at 24 px (fits 20 minutes here)
    w05e15     width 0.5, 15 epochs, peak lr 0.1, the first half at 24 px
               (both measured at full size: docs/benchmarks.md, "Accuracy and time to accuracy of the
               default run" and "Federated against centralized")
    w05e11k1   w05e11 averaging after every step (k = 1 throughout)
    w1e8r24    the previous default (width 1.0, 8 epochs, lr 0.05) with the first half at 24 px
    w05e11lr05 width 0.5, 11 epochs, peak lr 0.05, 32 px throughout (small screens: lr 0.1 costs
               5-7 points on Dirichlet(0.5) partitions at either width, the 24 px start 1-2 on both)
    w05e15lr05 the same with 15 epochs (about the default's time: 11 took 0.70x of it the same day)
    central    one process, 2 threads, all training images at the federation's global batch, the
               default recipe and epochs: the reference
Training time is measured from the first training step of any peer to the round record of the
last commit (the evaluations and the averaging included: what a user waits for); the centralized
run's from its first step to its last evaluation. Accuracies are the consensus (pooled BatchNorm
statistics) on the dev test split after each epoch. --train-limit and --epochs-scale shrink every
run alike for a quick look.

central_acc is the centralized run's accuracy at the default run's training time (its last
evaluation within that time), and fed_vs_central_s the default run's training time over the
centralized run's for the same epochs. Last line:
RESULT default_acc=.. default_train_s=.. central_acc=.. fed_vs_central_s=.. default_int8_acc=.. <run>_acc=.. <run>_train_s=.. <run>_int8_acc=..
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench import harness
from p2pfed import config
from p2pfed.outputs import metrics

CANDIDATES = {
    "default": {},
    "previous": {"model": {"width_mult": 1.0}, "train": {"epochs": 8.0, "lr": 0.05, "small_input": 0}},
    "w1e6": {"model": {"width_mult": 1.0}, "train": {"epochs": 6.0, "lr": 0.05, "small_input": 0}},
    "w05e11": {"model": {"width_mult": 0.5}, "train": {"epochs": 11.0, "lr": 0.1, "small_input": 24}},
    "w05e15": {"model": {"width_mult": 0.5}, "train": {"epochs": 15.0, "lr": 0.1, "small_input": 24}},
    "w05e11k1": {"model": {"width_mult": 0.5}, "train": {"epochs": 11.0, "lr": 0.1, "small_input": 24,
                                                         "local_steps": [1]}},
    "w1e8r24": {"model": {"width_mult": 1.0}, "train": {"epochs": 8.0, "lr": 0.05, "small_input": 24}},
    "w05e11lr05": {"model": {"width_mult": 0.5}, "train": {"epochs": 11.0, "lr": 0.05, "small_input": 0}},
    "w05e15lr05": {"model": {"width_mult": 0.5}, "train": {"epochs": 15.0, "lr": 0.05, "small_input": 0}},
}


def _config(args, overrides: dict, run: Path) -> Path:
    cfg = config.Config()
    for section, values in overrides.items():
        cfg = config.override(cfg, **{section: values})
    train = {"epochs": cfg.train.epochs * args.epochs_scale}
    data = {"dataset": "folder", "data_dir": args.data, "partition": args.partition, "alpha": args.alpha}
    if args.train_limit:
        data["train_limit"] = args.train_limit
    cfg = config.override(cfg, train=train, data=data)
    run.mkdir(parents=True, exist_ok=True)
    path = run / "recipe.toml"
    path.write_text(config.dumps_toml(cfg))
    return path


def federated(args, name: str, run: Path) -> dict:
    if args.reuse and (run / "run" / "summary.json").exists():
        print(f"{name}: reading the finished run in {run / 'run'} (--reuse)", flush=True)
        return read_federated(args, run)
    path = _config(args, CANDIDATES[name], run)
    harness.launch(["--peers", str(args.peers), "--config", str(path), "--no-report", "--quantize"], run / "run",
                   what=f"run {name}", cwd=harness.ROOT)
    return read_federated(args, run)


def read_federated(args, run: Path) -> dict:
    """A finished federated run's curve, time, accuracy, agreement and INT8 accuracy, from its files."""
    recs = [r for p in range(args.peers) for r in metrics.read(run / "run" / f"metrics-{p}.jsonl")]
    start = min(r["t"] for r in recs if r["type"] == "step")
    rounds = {r["round"]: r["t"] for r in recs if r["type"] == "round"}
    s = harness.summary(run / "run")
    curve = [((rounds[e["round"]] - start), e["epoch"], e["accuracy"]) for e in s["evaluations"]]
    res = {"curve": curve, "train_s": max(rounds.values()) - start, "acc": s["final"]["accuracy"],
           "agree": all(r["digests_agree"] for r in s["rounds"])}
    q = run / "run" / "quantization.json"
    if q.exists():
        res["int8_acc"] = json.loads(q.read_text())["rows"]["int8 onnx static"]["accuracy"]
    return res


def central(args, run: Path) -> dict:
    path = _config(args, {}, run)
    harness.centralized(["--config", str(path)], run)
    recs = metrics.read(run / "metrics-central.jsonl")
    start = min(r["t"] for r in recs if r["type"] in ("phase", "step"))
    curve = [(r["t"] - start, r["epoch"], r["correct"] / r["total"]) for r in recs if r["type"] == "round"]
    return {"curve": curve, "train_s": curve[-1][0], "acc": curve[-1][2]}


def plot(results: dict, budget_s: float, path: Path, peers: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in results.items():
        xs = [0.0] + [t / 60 for t, _, _ in r["curve"]]
        ys = [10.0] + [100 * a for _, _, a in r["curve"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{name} ({100 * r['acc']:.1f}%)")
    ax.axvline(budget_s / 60, color="grey", ls="--", lw=1)
    ax.text(budget_s / 60, 12, f" {budget_s / 60:.0f} min", color="grey")
    ax.set_xlabel("minutes since the first training step (2 cores)")
    ax.set_ylabel("accuracy on the dev test split (%)")
    ax.set_title(f"{peers} on one 2-core machine" + (", and the centralized reference" if "central" in results else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_data_flag(ap)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--partition", choices=["iid", "dirichlet"], default="iid",
                    help="the federated runs' partitions (the centralized run reads all images alike)")
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (--partition dirichlet)")
    ap.add_argument("--runs", default="default,central")
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--epochs-scale", type=float, default=1.0)
    ap.add_argument("--budget-s", type=float, default=1200.0)
    ap.add_argument("--plot", default="")
    ap.add_argument("--keep", default="", help="keep the run directories here")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: read a run that already finished there instead of running it again "
                         "(to re-plot; --partition must match the kept runs)")
    args = ap.parse_args()
    if args.reuse and not args.keep:
        ap.error("--reuse reads the runs kept under --keep DIR: give --keep too")
    names = [n for n in args.runs.split(",") if n]
    for n in names:
        if n != "central" and n not in CANDIDATES:
            sys.exit(f"unknown run {n!r}: choose from {', '.join(list(CANDIDATES) + ['central'])}")
    results: dict[str, dict] = {}
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="p2pfed-tta-"))
    try:
        for n in names:
            results[n] = central(args, tmp / n) if n == "central" else federated(args, n, tmp / n)
            r = results[n]
            print(f"{n:9s} {r['train_s']:7.0f} s  {100 * r['acc']:.2f}%  by epoch: "
                  + "  ".join(f"{e:g}:{100 * a:.2f}%@{t:.0f}s" for t, e, a in r["curve"]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.plot:
        skew = "IID" if args.partition == "iid" else f"Dirichlet({args.alpha:g})"
        plot(results, args.budget_s, Path(args.plot), f"{args.peers} {skew} peers")
    out = {}
    d = results.get("default")
    if d:
        out |= {"default_acc": f"{100 * d['acc']:.2f}", "default_train_s": f"{d['train_s']:.0f}",
                "default_agree": d["agree"]}
        if "int8_acc" in d:
            out["default_int8_acc"] = f"{100 * d['int8_acc']:.2f}"
    c = results.get("central")
    if c:
        if d:
            within = [a for t, _, a in c["curve"] if t <= d["train_s"]]
            out["central_acc"] = f"{100 * (within[-1] if within else float('nan')):.2f}"
            out["fed_vs_central_s"] = f"{d['train_s'] / c['train_s']:.2f}"
        out["central_final_acc"] = f"{100 * c['acc']:.2f}"
    for n, r in results.items():
        if n not in ("default", "central"):
            out |= {f"{n}_acc": f"{100 * r['acc']:.2f}", f"{n}_train_s": f"{r['train_s']:.0f}"}
            if "int8_acc" in r:
                out[f"{n}_int8_acc"] = f"{100 * r['int8_acc']:.2f}"
    print(f"dev test split, {args.peers} peers, {args.partition}"
          + (f"({args.alpha:g})" if args.partition == "dirichlet" else "")
          + (f", {args.train_limit} training images" if args.train_limit else "")
          + (f", epochs x {args.epochs_scale:g}" if args.epochs_scale != 1 else ""))
    harness.result(out)


if __name__ == "__main__":
    main()
