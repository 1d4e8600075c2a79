"""Training throughput: the project's loop, the speed-ups one might try, and the thread layouts of
5 peers on this machine, all side by side in one run.

    python -m bench.train_throughput [--batch 32] [--steps 20] [--trials 2] [--width-mult 1.0]
                                     [--variants plain,project,bf16,compile,batch64,observed]
                                     [--layouts peers5x1,procs2x1,central1x2,observed5x1] [--peers 5]
                                     [--layout-trials 1]
                                     [--data ../shared/data/cifar10-dev.tar.xz]

One process, one thread, the same MobileNetV2 (CIFAR stem, channels_last), SGD with Nesterov
momentum and the same uint8 images (the dev CIFAR-10 if present, else synthetic) with the random
crop and flip on the fly:
    plain     the baseline: the loop one would write by hand, fp32
    project   train.train_steps on augment.stream, as a peer runs it
    bf16      the project's loop under bf16 autocast (fp32 master weights, as train.precision = bf16)
    compile   the project's loop on torch.compile(net); its start-up (first step) is given apart
    batch64   the project's loop at 64 images a step
    observed  the project's loop with everything that watches a peer on (issue 27): each step's
              metrics record to the JSON-lines file, the status board and its file rewritten every
              second, TensorBoard event files, Prometheus metrics, and the metrics port scraped for
              /metrics and /status every 0.5 s by a thread of this process (observed_vs_project)
Trials alternate over the variants, so that the machine's noise hits all of them.

Layouts: the whole machine at once, each process running the project's loop, together:
    peers5x1    --peers processes of 1 thread (the default run: train.threads = 0 on 2 cores)
    procs2x1    one process of 1 thread per core
    central1x2  one process with a thread per core (the centralized reference)
    observed5x1 peers5x1 with the observed loop in every process: what watching costs when the
                peers fill the machine (observed5x1_vs_peers5x1)
Their img/s is all images of all processes over the wall time from a common start.

The machine's peak is an fp32 matrix product on all cores; a training image costs the forward and
backward FLOPs that torch.utils.flop_counter counts. peak_fraction = the best layout's FLOP/s
over that peak. Last line: RESULT ratio=<project/plain> ... peak_fraction=..
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from bench import harness
from p2pfed import config
from p2pfed.learning import augment, datasets, model, train

VARIANTS = ("plain", "project", "bf16", "compile", "batch64", "observed")
LAYOUTS = ("peers5x1", "procs2x1", "central1x2", "observed5x1")


def load(data: str, n: int = 4000):
    if Path(data).is_file():
        dcfg, source = config.DataConfig(dataset="folder", data_dir=data, train_limit=n), "dev CIFAR-10"
    else:
        dcfg, source = config.DataConfig(dataset="synthetic", synthetic_train=n), "synthetic"
    return datasets.load_split(dcfg, "train").loaded(), source


def plain_loop(net, images_u8, labels, batch, steps, gen):
    """What one would write by hand: shuffle, crop+flip, normalise, forward, backward, step."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
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


class Runner:
    """One variant, built once (a compiled model compiles once) and run for `steps` per trial."""

    def __init__(self, variant: str, split, batch: int, width: float):
        self.variant, self.split = variant, split
        self.batch = 64 if variant == "batch64" else batch
        self.net = model.channels_last(model.build(config.ModelConfig(width_mult=width), seed=0))
        precision = "bf16" if variant == "bf16" else "fp32"
        self.tcfg = config.override(config.Config(), train={"batch_size": self.batch, "lr_scaling": "none",
                                                            "precision": precision}).train
        self.opt = train.make_optimizer(self.net, self.tcfg)
        self.fwd = torch.compile(self.net) if variant == "compile" else self.net
        self.start_s = 0.0
        self.on_step = lambda i, loss: None
        if variant == "observed":
            self.on_step = Observed(self.opt).on_step
        if variant == "compile":          # the first step compiles: timed apart
            t0 = time.perf_counter()
            self.run(1, 0)
            self.start_s = time.perf_counter() - t0

    def run(self, steps: int, seed: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        self.spent0 = Observed.spent
        if self.variant == "plain":
            plain_loop(self.net, self.split.images, torch.from_numpy(self.split.labels), self.batch, steps, gen)
        else:
            stream = augment.stream(self.split, self.batch, gen, True, 32)
            train.train_steps(self.fwd, self.opt, stream, self.tcfg, steps, 0, steps, self.batch,
                              on_step=self.on_step)
        self.wall = time.perf_counter() - t0
        return steps * self.batch / self.wall


class Observed:
    """A peer's observers without its network: metrics file, status board and file, TensorBoard,
    Prometheus on a metrics port, and a scraper thread reading /metrics and /status."""

    def __init__(self, opt):
        import tempfile
        import threading
        import urllib.request

        from p2pfed.net.httpserve import HttpServer
        from p2pfed.outputs.metrics import MetricsWriter
        from p2pfed.outputs.prometheus_sink import PrometheusSink
        from p2pfed.outputs.tensorboard_sink import TensorBoardSink
        from p2pfed.run.observe.status import StatusBoard, StatusFile
        run_dir = Path(tempfile.mkdtemp(prefix="p2pfed-observed-"))
        self.opt, self.step, self.last = opt, 0, time.monotonic()
        self.metrics = MetricsWriter(run_dir / "metrics-0.jsonl", 0)
        board = StatusBoard(0, [0, 1, 2, 3, 4], 4.0, on_consensus=lambda c: None)
        self.metrics.add_sink(board.sink)
        self.metrics.add_sink(TensorBoardSink(run_dir / "tb" / "peer-0"))
        prom = PrometheusSink(0, live=board.live_counts)
        self.metrics.add_sink(prom)
        StatusFile(board, run_dir).start()
        server = HttpServer("127.0.0.1", 0, {"/metrics": lambda: ("text/plain", prom.text()),
                                             "/status": lambda: ("application/json",
                                                                 str(board.snapshot()).encode())}).start()

        def scrape():
            while True:
                for path in ("/metrics", "/status"):
                    urllib.request.urlopen(server.url + path, timeout=5).read()
                time.sleep(0.5)
        threading.Thread(target=scrape, daemon=True).start()
        self.metrics.write("plan", round=0, rounds=1000, epochs=10.0, total_steps=100000)

    spent = 0.0      # seconds inside on_step (the training thread's cost of the observers), over all instances

    def on_step(self, i: int, loss: float) -> None:
        now = time.monotonic()
        self.step += 1
        try:
            self._record(i, loss, now)
        finally:
            Observed.spent += time.monotonic() - now

    def _record(self, i: int, loss: float, now: float) -> None:
        self.metrics.write("step", round=1 + self.step // 4, step=i, steps=4, loss=round(loss, 5),
                           global_step=self.step, epoch=self.step / 1000, lr=float(self.opt.param_groups[0]["lr"]),
                           step_s=round(now - self.last, 5))
        self.last = now
        if self.step % 4 == 0:           # a round of k = 4: its stage changes and its record
            for phase in ("wait", "exchange", "train"):
                self.metrics.write("phase", round=1 + self.step // 4, phase=phase)
            self.metrics.write("round", round=self.step // 4, members=[0, 1, 2, 3, 4], attempt=0, averaging_s=0.1,
                               wait_s=0.05, train_s=0.4, bytes_sent=1000, epoch=self.step / 1000)


def _worker(threads: int, args, start, results, variant: str = "project") -> None:
    torch.set_num_threads(threads)
    split, _ = load(args.data, 1000)
    r = Runner(variant, split, args.batch, args.width_mult)
    r.run(2, 0)                              # warm-up
    start.wait()
    t0 = time.time()
    r.run(args.steps, 1)
    results.put((t0, time.time(), args.steps * args.batch))


def layout_img_s(name: str, args) -> float:
    procs, threads = {"peers5x1": (args.peers, 1), "procs2x1": (os.cpu_count() or 1, 1),
                      "central1x2": (1, os.cpu_count() or 1), "observed5x1": (args.peers, 1)}[name]
    variant = "observed" if name == "observed5x1" else "project"
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(threads, args, start, results, variant)) for _ in range(procs)]
    for p in ps:
        p.start()
    try:
        got = [results.get(timeout=600) for _ in ps]
    finally:
        for p in ps:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    return sum(n for _, _, n in got) / (max(e for _, e, _ in got) - min(s for s, _, _ in got))


def peak_flop_s(threads: int) -> float:
    """fp32 matrix product on `threads` threads: the machine's arithmetic ceiling as PyTorch reaches it."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t0))
    return best


def train_flop_per_image(width: float) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    net = model.build(config.ModelConfig(width_mult=width), seed=0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with FlopCounterMode(display=False) as fc:
        nn.functional.cross_entropy(net(x), y).backward()
    return fc.get_total_flops() / 8


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--layout-trials", type=int, default=1, help="runs of each layout, alternating (median)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    harness.add_data_flag(ap)
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    layouts = [v for v in args.layouts.split(",") if v]
    for v in variants + layouts:
        if v not in VARIANTS + LAYOUTS:
            sys.exit(f"unknown variant or layout {v!r}: choose from {', '.join(VARIANTS + LAYOUTS)}")
    if "plain" not in variants:
        variants.insert(0, "plain")        # the baseline every ratio is taken against
    split, source = load(args.data)
    torch.set_num_threads(1)
    runners = {v: Runner(v, split, args.batch, args.width_mult) for v in variants}
    rates: dict[str, list[float]] = {v: [] for v in variants}
    in_sinks: list[float] = []          # the observed loop's fraction of wall time spent writing records
    for trial in range(args.trials + 1):          # trial 0 warms every variant up and is not counted
        for v in variants:
            rate = runners[v].run(args.steps, trial)
            if trial:
                rates[v].append(rate)
                if v == "observed":
                    in_sinks.append((Observed.spent - runners[v].spent0) / runners[v].wall)
            print(f"trial {trial} {v:8s} {rate:6.1f} img/s" + ("  (warm-up)" if not trial else ""), flush=True)
    med = {v: statistics.median(r) for v, r in rates.items()}
    runs: dict[str, list[float]] = {name: [] for name in layouts}
    for trial in range(args.layout_trials):      # alternating, so that the machine's noise hits every layout
        for name in layouts:
            runs[name].append(layout_img_s(name, args))
            print(f"layout {name:11s} {runs[name][-1]:6.1f} img/s (all processes together)", flush=True)
    lay = {name: statistics.median(r) for name, r in runs.items()}
    flop_img = train_flop_per_image(args.width_mult)
    peak = peak_flop_s(os.cpu_count() or 1)
    best = max(lay.values()) if lay else med["plain"]
    fraction = best * flop_img / peak
    print(f"{source}, batch {args.batch}, 1 thread per variant, width {args.width_mult}, channels_last, "
          f"{args.steps} steps x {args.trials} trials each")
    print(f"one training image: {flop_img / 1e6:.0f} MFLOP (forward + backward); machine peak "
          f"{peak / 1e9:.1f} GFLOP/s (fp32 matmul, {os.cpu_count()} threads); best layout "
          f"{best * flop_img / 1e9:.1f} GFLOP/s = {100 * fraction:.1f}% of it")
    out = {"ratio": f"{med.get('project', float('nan')) / med['plain']:.3f}", "plain_img_s": f"{med['plain']:.1f}"}
    out |= {f"{v}_img_s": f"{med[v]:.1f}" for v in variants if v != "plain"}
    out |= {f"{v}_vs_plain": f"{med[v] / med['plain']:.3f}" for v in variants if v not in ("plain", "project")}
    if "observed" in med and "project" in med:
        out["observed_vs_project"] = f"{med['observed'] / med['project']:.3f}"
        out["observed_record_fraction"] = f"{statistics.median(in_sinks):.4f}"
    if "observed5x1" in lay and "peers5x1" in lay:
        out["observed5x1_vs_peers5x1"] = f"{lay['observed5x1'] / lay['peers5x1']:.3f}"
    if "compile" in runners:
        out["compile_start_s"] = f"{runners['compile'].start_s:.1f}"
    out |= {f"{name}_img_s": f"{r:.1f}" for name, r in lay.items()}
    out["peak_fraction"] = f"{fraction:.3f}"
    harness.result(out)


if __name__ == "__main__":
    main()
