"""Local training: the optimizer, and k optimiser steps on a peer's own batches."""
from __future__ import annotations

import os
from typing import Callable, Iterator

import torch
from torch import nn

from . import device as devices
from . import normfree
from .model import ModelError
from .schedule import lr_at, peak_lr


def default_threads(local_peers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, local_peers))


def make_optimizer(net: nn.Module, tcfg) -> torch.optim.Optimizer:
    # no weight decay on biases, BatchNorm's scale and shift, or the gains of a normalization-free model
    plain = [(n, p) for n, p in net.named_parameters()]
    decay = [p for n, p in plain if p.ndim > 1 and not n.endswith(".gain")]
    no_decay = [p for n, p in plain if p.ndim <= 1 or n.endswith(".gain")]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tcfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tcfg.lr)
    return torch.optim.SGD(groups, lr=tcfg.lr, momentum=0.9, nesterov=True)


def train_steps(net: nn.Module, opt: torch.optim.Optimizer, batches: Iterator, tcfg, n_steps: int,
                first_global_step: int, total_steps: int, global_batch: int,
                on_step: Callable[[int, float], None] | None = None,
                grad_hook: Callable[[], None] | None = None, frozen_bn: bool = False,
                stop: Callable[[], bool] | None = None, first_runs: bool = True) -> list[float]:
    """Run n_steps optimiser steps on the next batches of an endless batch stream (see
    augment.stream); returns the losses. global_batch sizes the learning rate (peak_lr). grad_hook
    runs after each backward pass, before the step (SCAFFOLD's correction, scaffold.py).
    frozen_bn: BatchNorm normalizes with its running statistics and leaves them (FixBN).
    stop: asked before each step (but the first, if first_runs); True ends the steps early.
    tcfg.agc_clip > 0 clips each unit's gradient to that fraction of its weights' norm, the
    classifier excepted (normfree.clip_gradients)."""
    net.train()
    if frozen_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    clipped = [p for n, p in net.named_parameters() if not n.startswith("classifier")] if tcfg.agc_clip else []
    losses: list[float] = []
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)
    top = peak_lr(tcfg, global_batch)
    for i in range(n_steps):
        if stop is not None and (i > 0 or not first_runs) and stop():
            break
        x, y = next(batches)
        x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(first_global_step + len(losses), total_steps, top, tcfg.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        with devices.autocast(x.device, tcfg.precision):
            loss = loss_fn(net(x), y)
        if not torch.isfinite(loss):
            raise ModelError(f"training loss became {loss.item()} at step {first_global_step + len(losses)}; "
                             f"lower train.lr")
        loss.backward()
        if clipped:
            normfree.clip_gradients(clipped, tcfg.agc_clip)
        if grad_hook:
            grad_hook()
        opt.step()
        losses.append(loss.item())
        if on_step:
            on_step(len(losses), losses[-1])
    return losses
