"""Training throughput of the project's loop on each device, side by side in one run.

    python -m bench.device_throughput [--devices cpu,cuda] [--batch 256] [--steps 30] [--width-mult 1.0]
                                      [--precision bf16] [--threads 0]

MobileNetV2 (CIFAR stem, channels-last) trained with train.train_steps on a stream of synthetic
uint8 images that live on the device (crop and flip there), as a peer does. Devices alternate
(cpu, cuda, cpu, cuda) so that noise hits both. Last line: RESULT <device>_img_s=.. ...
"""
from __future__ import annotations

import statistics
import time

import torch

from bench import harness
from p2pfed import config
from p2pfed.learning import augment, datasets, model, train
from p2pfed.learning import device as devices


def img_s(dev: torch.device, args) -> float:
    tcfg = config.TrainConfig(batch_size=args.batch, precision=args.precision, lr=0.05)
    net = model.channels_last(model.build(config.ModelConfig(width_mult=args.width_mult))).to(dev)
    opt = train.make_optimizer(net, tcfg)
    split = augment.on_device(datasets.synthetic(max(4 * args.batch, 2048), 0), dev)
    stream = augment.stream(split, args.batch, torch.Generator(device=dev).manual_seed(0), True, 32)
    train.train_steps(net, opt, stream, tcfg, 3, 0, 1000, args.batch)            # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train.train_steps(net, opt, stream, tcfg, args.steps, 3, 1000, args.batch)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - t0)


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devs = [devices.resolve(d) for d in args.devices.split(",")]
    res = {str(d.type): [] for d in devs}
    for _ in range(args.trials):
        for d in devs:
            res[d.type].append(img_s(d, args))
    for name, v in res.items():
        print(f"{name:<5} {statistics.median(v):9.0f} img/s  (trials {[round(x) for x in v]}), batch {args.batch}, "
              f"width {args.width_mult}, precision {args.precision if name == 'cuda' else 'fp32'}")
    harness.result({f"{name}_img_s": f"{statistics.median(v):.0f}" for name, v in res.items()})


if __name__ == "__main__":
    main()
