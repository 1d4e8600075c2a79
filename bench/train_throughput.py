"""The project's training loop against a plain hand-written PyTorch loop, side by side.

    python bench/train_throughput.py [--batch 32] [--threads 1] [--steps 30] [--trials 3] [--width-mult 1.0]
                                     [--data ../shared/data/cifar10-dev.tar.xz]

Both train the same MobileNetV2 (CIFAR stem, channels_last) with AdamW on the same uint8 images
(the dev CIFAR-10 if present, else synthetic), normalised and augmented (random crop with 4 px
padding, horizontal flip) on the fly, with the same batch and number of threads. The project's
side is train.train_steps on a augment.stream with its metrics callback; the plain side is the
loop a user would write by hand. Trials alternate (plain, project, plain, ...) so that machine
noise hits both. Last line: RESULT ratio=<project img/s / plain img/s> ...
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from p2pfed import config  # noqa: E402
from p2pfed.learning import augment, datasets, model, train  # noqa: E402


def plain_loop(net, images_u8, labels, batch, steps, gen):
    """What one would write by hand: shuffle, crop+flip, normalise, forward, backward, step."""
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
    mean = torch.tensor(augment.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(augment.CIFAR_STD).view(1, 3, 1, 1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    net.train()
    order = torch.randperm(len(labels), generator=gen)
    for i in range(steps):
        idx = order[(i * batch) % len(order):][:batch]
        x = augment.augment(images_u8[idx], gen)
        x = ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), labels[idx])
        loss.backward()
        opt.step()
        loss.item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-dev.tar.xz"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if Path(args.data).is_file():
        dcfg = config.DataConfig(dataset="folder", data_dir=args.data, train_limit=4000)
        source = "dev CIFAR-10"
    else:
        dcfg = config.DataConfig(dataset="synthetic", synthetic_train=4000)
        source = "synthetic"
    split = datasets.load_split(dcfg, "train").loaded()
    labels = torch.from_numpy(split.labels)
    tcfg = config.override(config.Config(), train={"batch_size": args.batch, "lr_scaling": "none"}).train
    mcfg = config.ModelConfig(width_mult=args.width_mult)
    rates = {"plain": [], "project": []}
    for trial in range(args.trials + 1):          # trial 0 warms both up and is not counted
        for side in ("plain", "project"):
            net = model.channels_last(model.build(mcfg, seed=0))
            gen = torch.Generator().manual_seed(trial)
            t0 = time.perf_counter()
            if side == "plain":
                plain_loop(net, split.images, labels, args.batch, args.steps, gen)
            else:
                opt = train.make_optimizer(net, tcfg)
                stream = augment.stream(split, args.batch, gen, True, 32)
                train.train_steps(net, opt, stream, tcfg, args.steps, 0, args.steps, args.batch,
                                  on_step=lambda i, loss: None)
            rate = args.steps * args.batch / (time.perf_counter() - t0)
            if trial:
                rates[side].append(rate)
            print(f"trial {trial} {side:8s} {rate:6.1f} img/s" + ("  (warm-up)" if not trial else ""), flush=True)
    plain, project = statistics.median(rates["plain"]), statistics.median(rates["project"])
    print(f"{source}, batch {args.batch}, {args.threads} thread(s), width {args.width_mult}, channels_last, "
          f"{args.steps} steps x {args.trials} trials each")
    print(f"RESULT ratio={project / plain:.3f} project_img_s={project:.1f} plain_img_s={plain:.1f} "
          f"batch={args.batch} threads={args.threads}")


if __name__ == "__main__":
    main()
