"""The reference run: one process trains on the union of all partitions with the same recipe.

Same model, optimizer, schedule, augmentation, label smoothing and channels-last layout as the
peers, for the same number of epochs, at the federation's global batch (peers x batch_size,
unless --batch-size says otherwise) with the same learning-rate rule. One evaluation per epoch
goes to metrics-central.jsonl ("round" = epoch), so it lines up with a federated run's curve.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from .. import config
from ..learning import augment, datasets, evaluate, model, photos, schedule
from ..learning import train as training
from ..outputs import checkpoint
from ..outputs.metrics import MetricsWriter
from .node import own_data

log = logging.getLogger("p2pfed.run.centralized")


def run(cfg: config.Config, run_dir: Path, batch_size: int = 0) -> dict:
    """Train for cfg.train.epochs; batch_size 0 = the federation's global batch."""
    torch.set_num_threads(cfg.train.threads or training.default_threads(1))
    batch = batch_size or cfg.train.batch_size * max(1, len(cfg.peers))
    tcfg = config.override(cfg, train={"batch_size": batch}).train
    size = cfg.model.input_size
    train = datasets.load_split(cfg.data, "train", size)
    test = datasets.load_split(cfg.data, "test", size)
    own_data.check_classes(cfg, train.classes)
    train = train if train.stream else train.loaded()
    test = test if test.stream else test.loaded()
    decoder = photos.Decoder(cfg.data.workers) if train.stream or test.stream else None
    net = model.channels_last(model.build(cfg.model, seed=cfg.data.seed, classes=train.classes))
    opt = training.make_optimizer(net, tcfg)
    per_epoch = schedule.steps_per_epoch(len(train), batch)
    epochs = math.ceil(tcfg.epochs)
    total = math.ceil(tcfg.epochs * per_epoch)
    if train.stream:    # photos, decoded while training as the peers do it
        batches = photos.PhotoStream(train.files, train.labels, batch, torch.Generator().manual_seed(cfg.data.seed),
                                     tcfg.augment, size, size, decoder)
    else:
        batches = augment.stream(train, batch, torch.Generator().manual_seed(cfg.data.seed), tcfg.augment, size)
    metrics = MetricsWriter(run_dir / "metrics-central.jsonl", -1)
    step0, last = 0, {}
    log.info("centralized: %d training images, batch %d, %d epochs x %d steps, peak lr %.2e", len(train), batch,
             epochs, per_epoch, schedule.peak_lr(tcfg, batch))
    for epoch in range(1, epochs + 1):
        metrics.write("phase", round=epoch, phase="train")
        started = time.monotonic()
        steps = min(per_epoch, total - step0)

        def on_step(i, loss, epoch=epoch, step0=step0):
            metrics.write("step", round=epoch, step=i, steps=steps, loss=round(loss, 5), global_step=step0 + i,
                          epoch=round((step0 + i) / per_epoch, 4))

        # progressive resizing (train.small_input) as the peers do it, switching at the same step
        switch = min(steps, max(0, math.ceil(tcfg.small_until * total) - step0)) if tcfg.small_input else steps
        losses = []
        for first, n in ((0, switch), (switch, steps - switch)):
            if n:
                batches.size = schedule.input_size_at(step0 + first, total, cfg.model.input_size, tcfg.small_input,
                                                      tcfg.small_until)
                losses += training.train_steps(net, opt, batches, tcfg, n, step0 + first, total, batch,
                                               lambda i, loss, f=first: on_step(f + i, loss))
        step0 += len(losses)
        train_s = time.monotonic() - started
        ev = evaluate.evaluate(net, test, cfg.train.eval_batch_size, cfg.model.input_size, cfg.model.num_classes,
                               decoder)
        last = {"accuracy": ev["correct"] / ev["total"], **ev}
        metrics.write("round", round=epoch, epoch=round(step0 / per_epoch, 4), train_s=round(train_s, 2),
                      train_loss=sum(losses) / len(losses), **ev)
        log.info("epoch %d: accuracy %.2f%% (%.0f s, %.0f img/s)", epoch, 100 * last["accuracy"], train_s,
                 len(losses) * batch / train_s)
    metrics.close()
    checkpoint.save_consensus(run_dir / "central.pt", state_dict=net.state_dict(),
                              model_args=model.model_args(cfg.model), config=config.to_dict(cfg), rnd=epochs,
                              peers=[], digest="", written_by=-1, classes=list(train.classes))
    return last
