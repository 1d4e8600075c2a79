"""Federated recipes side by side: the same peers, data and epochs, one real run (launch.py) per
recipe, one after another.

    python -m bench.recipes [--data ../shared/data/cifar10-dev.tar.xz] [--epochs 3] [--peers 5]
                            [--train-limit 10000] [--width-mult 0.5] [--partition iid]
                            [--recipes base,outer,avgopt] [--local-steps 1,2,4]

Recipes (train.* overrides on top of the defaults):
    base     the defaults
    outer    outer Nesterov momentum 0.5, outer lr 0.5 (SlowMo/DiLoCo-style, the same step on every peer)
    avgopt   the optimizer's buffers (SGD momentum) averaged with the weights
    outer7   outer momentum 0.7, outer lr 0.5
    scaffold SCAFFOLD control variates (train.scaffold; meant for --partition dirichlet)
Accuracy is the final consensus (pooled BatchNorm statistics) on the dev test split. Each
recipe's wall time and bytes sent per peer per round are given relative to `base`.
Last line: RESULT base_acc=.. outer_acc=.. outer_vs_base=.. outer_bytes_ratio=.. ...
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench import harness

RECIPES = {
    "base": {},
    "outer": {"outer_momentum": 0.5, "outer_lr": 0.5},
    "outer7": {"outer_momentum": 0.7, "outer_lr": 0.5},
    "avgopt": {"average_optimizer_state": True},
    "scaffold": {"scaffold": True},
}


def run_recipe(args, tmp: Path, name: str) -> dict:
    from p2pfed import config
    train = dict(RECIPES[name])
    if args.local_steps:
        train["local_steps"] = [int(k) for k in args.local_steps.split(",")]
    cfg = config.override(config.Config(), train=train)
    path = tmp / f"{name}.toml"
    path.write_text(config.dumps_toml(cfg))
    run = tmp / name
    flags = ["--peers", str(args.peers), "--config", str(path), "--dataset", "folder", "--data-dir", args.data,
             "--partition", args.partition, "--alpha", "0.5", "--epochs", str(args.epochs), "--no-report",
             "--no-quantize"]
    flags += ["--train-limit", str(args.train_limit)] if args.train_limit else []
    flags += ["--width-mult", str(args.width_mult)] if args.width_mult else []
    wall = harness.launch(flags, run, what=f"recipe {name}", cwd=tmp).wall_s
    s = harness.summary(run)
    rounds = s["rounds"]
    sent = harness.bytes_per_peer_round(s)
    return {"acc": s["final"]["accuracy"], "wall": wall, "bytes": sent, "rounds": len(rounds),
            "curve": [(e["epoch"], e["accuracy"]) for e in s["evaluations"]]}


def main() -> None:
    ap = harness.small_run_parser(__doc__)
    ap.add_argument("--partition", default="iid", choices=["iid", "dirichlet"])
    ap.add_argument("--local-steps", default="", help="e.g. 2,4,8 (default: the config's default)")
    ap.add_argument("--recipes", default="base,outer,avgopt")
    args = ap.parse_args()
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown or "base" not in names:
        raise SystemExit(f"--recipes must include base and name only {sorted(RECIPES)}; got {names}")
    got = {}
    with tempfile.TemporaryDirectory(prefix="p2pfed-recipes-") as tmp:
        for name in names:
            got[name] = run_recipe(args, Path(tmp), name)
            g = got[name]
            print(f"{name:8s} acc {100 * g['acc']:.2f}%  wall {g['wall']:6.0f} s  {g['rounds']} rounds  "
                  f"{g['bytes'] / 1e6:.2f} MB/peer/round  by epoch: "
                  + "  ".join(f"{e:.2f}:{100 * a:.2f}%" for e, a in g["curve"]), flush=True)
    base = got["base"]
    fields = {f"{n}_acc": f"{100 * g['acc']:.2f}" for n, g in got.items()}
    for n, g in got.items():
        if n != "base":
            fields |= {f"{n}_vs_base": f"{100 * (g['acc'] - base['acc']):+.2f}",
                       f"{n}_bytes_ratio": f"{g['bytes'] / base['bytes']:.2f}",
                       f"{n}_wall_ratio": f"{g['wall'] / base['wall']:.2f}"}
    print(f"dev test split, {args.partition}, {args.epochs:g} epochs, {args.peers} peers"
          + (f", {args.train_limit} training images" if args.train_limit else "")
          + (f", width {args.width_mult:g}" if args.width_mult else ""))
    harness.result(fields)


if __name__ == "__main__":
    main()
