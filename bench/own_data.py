"""Sites that bring their own photos: 3 sites cut from clothing-dev by `p2pfed sites` (Dirichlet(0.5)
by class), federated, against one process training on the union of the three folders with the
same recipe, epochs and image size, one after the other in this one run; then the photo loader
against a plain torchvision ImageFolder + DataLoader loop, side by side.

    python -m bench.own_data [--data ../shared/data/clothing-dev.tar] [--epochs E] [--size 128]
                             [--width-mult 0.5] [--loader-steps 60] [--keep DIR] [--runs fed,central,loader]

    fed_acc       the consensus on the three sites' own test folders, pooled (= the 341 dev test photos)
    central_acc   the one-process model on the same 341 photos
    fed_vs_central_s  the federated run's wall time / the centralized run's (training and evaluation)
    img_s_per_peer    training images per second of one peer in the federated run (3 peers on this machine)
    loader_vs_plain   training images per second, one process, the peer's loader (photos.PhotoStream, 2
                      decoding threads) / torchvision ImageFolder + DataLoader (2 worker processes), both
                      feeding the same model's training steps at the same size and batch
    peak_rss_mb       the largest peak resident set of the federated run's peers

Accuracies are development figures on clothing-dev/test. Last line:
RESULT fed_acc=.. central_acc=.. fed_vs_central_s=.. img_s_per_peer=.. loader_vs_plain=.. peak_rss_mb=..
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench import harness


def sites_of(args, work: Path) -> tuple[Path, list[Path]]:
    from p2pfed.learning import folders
    from p2pfed.run.launch import sites
    root = folders.unpack_archive(Path(args.data), str(work / "cache")) if Path(args.data).is_file() \
        else Path(args.data)
    root = root / "clothing-dev" if (root / "clothing-dev").is_dir() else root
    out = work / "sites"
    if not out.exists():
        m = sites.make_sites(str(root), str(out), args.sites, "dirichlet", 0.5, seed=0)
        for s in m["sites"]:
            print(f"{s['folder']}: train {sum(s['train'].values())} {s['train']}", flush=True)
    return root, [out / f"site{k}" for k in range(args.sites)]


def recipe_args(args) -> list[str]:
    return ["--preset", "photos", "--epochs", str(args.epochs), "--width-mult", str(args.width_mult)]


def federated(args, work: Path, dirs: list[Path]) -> dict:
    run = work / "fed"
    base = work / "photos.toml"
    base.write_text(f"[model]\ninput_size = {args.size}\n[output]\ntensorboard = false\n")
    flags = ["--config", str(base), "--peers", str(len(dirs)), *recipe_args(args), "--no-quantize"]
    for d in dirs:
        flags += ["--data-dir", str(d)]
    wall = harness.launch(flags, run, what="federated run", cwd=work).wall_s
    s = harness.summary(run)
    rates, rss = [], []
    for m in sorted(run.glob("metrics-*.jsonl")):
        images = train_s = 0.0
        for line in m.read_text().splitlines():
            r = json.loads(line)
            if r["type"] == "round":
                images, train_s = images + r.get("images", 0), train_s + r.get("train_s", 0.0)
            if r["type"] == "exit":
                rss.append(r["peak_rss_mb"])
        rates.append(images / train_s if train_s else 0.0)
    print(f"federated: wall {wall:.0f} s; pooled {100 * s['sites']['pooled']['accuracy']:.2f}%; per site "
          + ", ".join(f"peer {k} {100 * (v['accuracy'] or 0):.2f}% of {v['total']}" for k, v in s["sites"].items()
                      if k != "pooled")
          + "; by epoch: " + "  ".join(f"{e['epoch']:.1f}:{100 * e['accuracy']:.1f}%" for e in s["evaluations"]),
          flush=True)
    print(f"federated: per-site plot {run / 'plots' / 'sites.png'}", flush=True)
    return {"acc": s["final"]["accuracy"], "wall": wall, "img_s": sum(rates) / len(rates), "rss": max(rss),
            "run": run}


def central(args, work: Path, root: Path, fed_run: Path) -> dict:
    run = work / "central"
    run.mkdir(exist_ok=True)
    # the federated run's resolved config: the same recipe, classes, epochs and global batch
    wall = harness.centralized(["--config", str(fed_run / "config.toml"), "--dataset", "folder", "--data-dir",
                                str(root)], run).wall_s
    rounds = harness.central_rounds(run)
    print(f"central:   wall {wall:.0f} s; by epoch: "
          + "  ".join(f"{r['epoch']:.1f}:{100 * r['correct'] / r['total']:.1f}%" for r in rounds), flush=True)
    return {"acc": rounds[-1]["correct"] / rounds[-1]["total"], "wall": wall}


def loader(args, root: Path) -> float:
    """Training images per second through the peer's loader / through ImageFolder + DataLoader."""
    import torch
    from torchvision import datasets as tvd
    from torchvision import transforms as T

    from p2pfed import config
    from p2pfed.learning import augment, datasets, model, photos
    from p2pfed.learning import train as training
    from p2pfed.run.launch.presets import PRESETS
    torch.set_num_threads(2)
    cfg = config.override(config.Config(), **PRESETS["photos"])
    cfg = config.override(cfg, model={"input_size": args.size, "width_mult": args.width_mult})
    bs, size = cfg.train.batch_size, args.size
    split = datasets.image_folder(str(root), "train", size=size, loader="stream")

    def train_on(batches) -> float:
        net = model.channels_last(model.build(cfg.model, seed=0))
        opt = training.make_optimizer(net, cfg.train)
        training.train_steps(net, opt, batches, cfg.train, 5, 0, 1000, bs)     # warm-up
        t0 = time.monotonic()
        training.train_steps(net, opt, batches, cfg.train, args.loader_steps, 5, 1000, bs)
        return args.loader_steps * bs / (time.monotonic() - t0)

    dec = photos.Decoder(cfg.data.workers)
    try:
        ours = train_on(photos.PhotoStream(split.files, split.labels, bs, torch.Generator().manual_seed(0), True,
                                           size, size, dec))
    finally:
        dec.close()
    tf = T.Compose([T.RandomResizedCrop(size, scale=photos.CROP_SCALE), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(augment.CIFAR_MEAN, augment.CIFAR_STD)])
    dl = torch.utils.data.DataLoader(tvd.ImageFolder(str(root / "train"), tf), batch_size=bs, shuffle=True,
                                     num_workers=2, persistent_workers=True, drop_last=True)

    def endless():
        while True:
            yield from dl

    plain = train_on(endless())
    print(f"loader: {ours:.1f} img/s through photos.PhotoStream, {plain:.1f} img/s through ImageFolder + "
          f"DataLoader (2 workers), {args.size} px, batch {bs}, training MobileNetV2 width {args.width_mult}",
          flush=True)
    return ours / plain


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_data_flag(ap, "clothing-dev.tar")
    ap.add_argument("--epochs", type=float, default=40.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width-mult", type=float, default=0.5)
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--loader-steps", type=int, default=60)
    ap.add_argument("--runs", default="fed,central,loader")
    ap.add_argument("--keep", default="", help="keep the sites and runs in this folder")
    args = ap.parse_args()
    runs = args.runs.split(",")
    with tempfile.TemporaryDirectory(prefix="p2pfed-own-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        root, dirs = sites_of(args, work)
        fields = {}
        fed = federated(args, work, dirs) if "fed" in runs else None
        if fed:
            fields["fed_acc"] = f"{100 * fed['acc']:.2f}"
        cen = central(args, work, root, fed["run"]) if "central" in runs and fed else None
        if cen:
            fields["central_acc"] = f"{100 * cen['acc']:.2f}"
            fields["fed_vs_central_s"] = f"{fed['wall'] / cen['wall']:.2f}"
        if fed:
            fields["img_s_per_peer"] = f"{fed['img_s']:.1f}"
        if "loader" in runs:
            fields["loader_vs_plain"] = f"{loader(args, root):.2f}"
        if fed:
            fields["peak_rss_mb"] = f"{fed['rss']:.0f}"
    print(f"clothing-dev, {args.sites} sites (Dirichlet(0.5) by class), {args.epochs:g} epochs, {args.size} px, "
          f"width {args.width_mult}; accuracies on the dev test photos")
    harness.result(fields)


if __name__ == "__main__":
    main()
