"""Local training: the optimizer, and k optimiser steps on a peer's own batches."""
from __future__ import annotations

import os
from typing import Callable, Iterator

import torch
from torch import nn

from .model import ModelError
from .schedule import lr_at, peak_lr


def default_threads(local_peers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, local_peers))


def make_optimizer(net: nn.Module, tcfg) -> torch.optim.Optimizer:
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tcfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tcfg.lr)
    return torch.optim.SGD(groups, lr=tcfg.lr, momentum=0.9, nesterov=True)


def train_steps(net: nn.Module, opt: torch.optim.Optimizer, batches: Iterator, tcfg, n_steps: int,
                first_global_step: int, total_steps: int, global_batch: int,
                on_step: Callable[[int, float], None] | None = None,
                grad_hook: Callable[[], None] | None = None) -> list[float]:
    """Run n_steps optimiser steps on the next batches of an endless batch stream (see
    data.stream); returns the losses. global_batch sizes the learning rate (peak_lr). grad_hook
    runs after each backward pass, before the step (SCAFFOLD's correction, scaffold.py)."""
    net.train()
    losses: list[float] = []
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)
    top = peak_lr(tcfg, global_batch)
    for _ in range(n_steps):
        x, y = next(batches)
        x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(first_global_step + len(losses), total_steps, top, tcfg.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        if not torch.isfinite(loss):
            raise ModelError(f"training loss became {loss.item()} at step {first_global_step + len(losses)}; "
                             f"lower train.lr")
        loss.backward()
        if grad_hook:
            grad_hook()
        opt.step()
        losses.append(loss.item())
        if on_step:
            on_step(len(losses), losses[-1])
    return losses
