"""Training modes on label-skewed partitions, side by side: one real run (launch.py) per mode and
partition, one after another, plus the centralized reference (`p2pfed centralized`), at equal
epochs on the same data.

    python -m bench.noniid [--data ../shared/data/cifar10-dev.tar.xz] [--train-limit 10000]
                           [--epochs 3] [--width-mult 0.5] [--peers 5]
                           [--modes base,sync] [--partitions iid,dir05,dir01,shards2] [--no-central]

Modes (model.* / train.* overrides on top of the defaults):
    base      the default recipe: each peer's BatchNorm over its own batch, k = 1, 2, 4 over the run
    base1     the same, averaging after every step (k = 1)
    sync      synchronized BatchNorm across the round's members, every step, k = 1 (--preset noniid)
    normfree  no normalization: scaled weight standardization, SkipInit, adaptive gradient clipping
    scaffold  SCAFFOLD control variates
    fixbn     FixBN: BatchNorm frozen to the pooled statistics halfway through the run
Partitions: iid; dir05 and dir01 (Dirichlet alpha 0.5 and 0.1); shards2 (2 label-sorted shards per
peer: 2 classes each). Accuracies are the final consensus on the dev test split (10,000 images).
For each mode: accuracy per partition, the gap to its own IID run, and wall time relative to the
base IID run. The last line is about the first mode listed (or --result MODE):
RESULT iid=.. dir05=.. dir01=.. shards2=.. central=.. dir05_vs_iid=..
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import harness

MODES = {
    "base": {},
    "sync": {"train": {"batchnorm": "sync", "local_steps": [1]}},
    "base1": {"train": {"local_steps": [1]}},
    "normfree": {"model": {"norm": "none"}, "train": {"agc_clip": 0.04}},
    "scaffold": {"train": {"scaffold": True}},
    "fixbn": {"train": {"batchnorm": "frozen", "freeze_bn_at": 0.5}},
}
PARTITIONS = {"iid": ("iid", 0.5), "dir05": ("dirichlet", 0.5), "dir01": ("dirichlet", 0.1), "shards2": ("shards", 0.5)}


def _config(tmp: Path, name: str, sections: dict, extra: str) -> Path:
    """The mode's config; `extra` (TOML) overrides it key by key."""
    import tomllib

    from p2pfed import config
    merged = {k: dict(v) for k, v in sections.items()}
    for section, values in tomllib.loads(extra).items() if extra else ():
        merged.setdefault(section, {}).update(values)
    cfg = config.override(config.Config(), **merged)
    path = tmp / f"{name}.toml"
    path.write_text(config.dumps_toml(cfg))
    return path


def run_mode(args, tmp: Path, mode: str, part: str) -> dict:
    kind, alpha = PARTITIONS[part]
    path = _config(tmp, mode, MODES[mode], args.extra)
    run = tmp / f"{mode}-{part}"
    flags = ["--peers", str(args.peers), "--config", str(path), "--dataset", "folder", "--data-dir", args.data,
             "--partition", kind, "--alpha", str(alpha), "--epochs", str(args.epochs), "--no-report", "--no-quantize",
             "--width-mult", str(args.width_mult)]
    flags += ["--train-limit", str(args.train_limit)] if args.train_limit else []
    done = harness.launch(flags, run, what=f"mode {mode} on {part}", cwd=tmp)
    s = harness.summary(run)
    return {"acc": s["final"]["accuracy"], "wall_s": done.wall_s, "curve": [round(100 * e["accuracy"], 2)
                                                                    for e in s["evaluations"]]}


def run_central(args, tmp: Path) -> dict:
    path = _config(tmp, "central", {}, args.extra)
    run = tmp / "central"
    flags = ["--config", str(path), "--epochs", str(args.epochs), "--dataset", "folder", "--data-dir", args.data,
             "--width-mult", str(args.width_mult), "--batch-size", str(32 * args.peers)]
    flags += ["--train-limit", str(args.train_limit)] if args.train_limit else []
    t0 = time.monotonic()
    harness.centralized(flags, run, cwd=tmp)
    recs = harness.central_rounds(run)
    return {"acc": recs[-1]["correct"] / recs[-1]["total"], "wall_s": time.monotonic() - t0,
            "curve": [round(100 * r["correct"] / r["total"], 2) for r in recs]}


def main() -> None:
    ap = harness.small_run_parser(__doc__)
    ap.add_argument("--modes", default="base,sync")
    ap.add_argument("--partitions", default="iid,dir05,dir01,shards2")
    ap.add_argument("--result", default=None, help="the mode the RESULT line is about (default: the first)")
    ap.add_argument("--no-central", action="store_true")
    ap.add_argument("--extra", default="", help="TOML appended to every run's config (exploration)")
    args = ap.parse_args()
    modes, parts = args.modes.split(","), args.partitions.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-noniid-"))
    print(f"{len(modes)} modes x {len(parts)} partitions, {args.peers} peers, {args.train_limit or 'all'} images, "
          f"{args.epochs:g} epochs, width {args.width_mult}; runs in {tmp}", flush=True)
    res: dict[tuple[str, str], dict] = {}
    for mode in modes:
        for part in parts:
            res[mode, part] = r = run_mode(args, tmp, mode, part)
            print(f"{mode:<9} {part:<8} {100 * r['acc']:6.2f}%  {r['wall_s']:6.0f} s  per epoch {r['curve']}",
                  flush=True)
    central = None if args.no_central else run_central(args, tmp)
    if central:
        print(f"central            {100 * central['acc']:6.2f}%  {central['wall_s']:6.0f} s  per epoch "
              f"{central['curve']}", flush=True)
    base_wall = res.get((modes[0], "iid"), next(iter(res.values())))["wall_s"]
    print(f"\n{'mode':<9}" + "".join(f"{p:>9}" for p in parts) + "   gap to IID (points)   wall vs first IID")
    for mode in modes:
        accs = [100 * res[mode, p]["acc"] for p in parts]
        iid = 100 * res[mode, "iid"]["acc"] if (mode, "iid") in res else None
        gaps = " ".join(f"{a - iid:+.2f}" for a, p in zip(accs, parts) if p != "iid") if iid is not None else "-"
        walls = " ".join(f"{res[mode, p]['wall_s'] / base_wall:.2f}" for p in parts)
        print(f"{mode:<9}" + "".join(f"{a:9.2f}" for a in accs) + f"   {gaps:<20}  {walls}")
    chosen = args.result or modes[0]
    fields = {p: 100 * res[chosen, p]["acc"] for p in parts if (chosen, p) in res}
    line = {"mode": chosen} | {p: f"{v:.2f}" for p, v in fields.items()}
    if central:
        line["central"] = f"{100 * central['acc']:.2f}"
    if "iid" in fields and "dir05" in fields:
        line["dir05_vs_iid"] = f"{fields['dir05'] - fields['iid']:+.2f}"
    harness.result(line)


if __name__ == "__main__":
    main()
