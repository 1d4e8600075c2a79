"""The reference run: one process trains on the union of all partitions with the same settings.

A "round" here is the same amount of data as a federated round (local_epochs over the whole
training set), so metrics-central.jsonl lines up round by round with a federated run.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from . import checkpoint, config, data, model
from .metrics import MetricsWriter

log = logging.getLogger("p2pfed.centralized")


def run(cfg: config.Config, run_dir: Path) -> dict:
    torch.set_num_threads(cfg.train.threads or model.default_threads(1))
    train = data.load_split(cfg.data, "train").loaded()
    test = data.load_split(cfg.data, "test").loaded()
    net = model.build(cfg.model, seed=cfg.data.seed)
    opt = model.make_optimizer(net, cfg.train)
    steps = model.steps_per_round(len(train), cfg.train)
    total = steps * cfg.train.rounds
    gen = torch.Generator().manual_seed(cfg.data.seed)
    metrics = MetricsWriter(run_dir / "metrics-central.jsonl", -1)
    step0, last = 0, {}
    log.info("centralized: %d training images, %d rounds x %d steps", len(train), cfg.train.rounds, steps)
    for rnd in range(1, cfg.train.rounds + 1):
        metrics.write("phase", round=rnd, phase="train")
        started = time.monotonic()

        def on_step(i, loss, rnd=rnd, step0=step0):
            metrics.write("step", round=rnd, step=i, steps=steps, loss=round(loss, 5), global_step=step0 + i)

        losses = model.train_steps(net, opt, train, cfg.train, cfg.model.input_size, steps, step0, total, gen, on_step)
        step0 += len(losses)
        ev = model.evaluate(net, test, cfg.train.eval_batch_size, cfg.model.input_size)
        last = {"accuracy": ev["correct"] / ev["total"], **ev}
        metrics.write("round", round=rnd, train_s=round(time.monotonic() - started, 2),
                      train_loss=sum(losses) / len(losses), **ev)
        log.info("round %d: accuracy %.2f%%", rnd, 100 * last["accuracy"])
    metrics.close()
    checkpoint.save_consensus(run_dir / "central.pt", state_dict=net.state_dict(), model_args=model.model_args(cfg.model),
                              config=config.to_dict(cfg), rnd=cfg.train.rounds, peers=[], digest="", written_by=-1)
    return last
