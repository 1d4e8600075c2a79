"""MobileNetV2 for small images: build, train locally, evaluate. No networking here."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict
from typing import Callable, Iterator

import torch
import torchvision
from torch import nn

from . import data

log = logging.getLogger("p2pfed.model")


class ModelError(RuntimeError):
    """The model cannot be built as configured; the message says what to do."""


def build(mcfg, seed: int = 0) -> nn.Module:
    """MobileNetV2 with a num_classes head, from a ModelConfig."""
    torch.manual_seed(seed)
    weights = None
    if mcfg.pretrained:
        if mcfg.width_mult != 1.0:
            raise ModelError("model.pretrained needs model.width_mult = 1.0 (ImageNet weights exist only for it)")
        weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    try:
        net = torchvision.models.mobilenet_v2(weights=weights, width_mult=mcfg.width_mult)
    except Exception as e:  # offline and not in torch's cache
        raise ModelError(f"could not get ImageNet weights for MobileNetV2 ({type(e).__name__}: {str(e)[:100]}); "
                         f"offline, set model.weights_file to a local state_dict or model.pretrained = false") from None
    if mcfg.weights_file:
        if not os.path.isfile(mcfg.weights_file):
            raise ModelError(f"model.weights_file {mcfg.weights_file} does not exist")
        state = torch.load(mcfg.weights_file, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.startswith("classifier.")]:
            raise ModelError(f"model.weights_file {mcfg.weights_file} does not fit MobileNetV2 width "
                             f"{mcfg.width_mult}: unexpected {unexpected[:3]}, missing {missing[:3]}")
    in_features = net.classifier[-1].in_features
    net.classifier[-1] = nn.Linear(in_features, mcfg.num_classes)
    if mcfg.cifar_stem:
        net.features[0][0].stride = (1, 1)
    return net


def model_args(mcfg) -> dict:
    return asdict(mcfg)


def default_threads(local_peers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, local_peers))


def lr_at(step: int, total_steps: int, peak_lr: float, schedule: str) -> float:
    """Learning rate at global step `step` of `total_steps` (pure)."""
    if schedule == "constant" or total_steps <= 1:
        return peak_lr
    t = min(1.0, step / (total_steps - 1))
    if schedule == "cosine":
        return 0.5 * peak_lr * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":  # linear warm-up over 15%, cosine down to peak/1000
        warm = 0.15
        if t < warm:
            return peak_lr * (0.04 + 0.96 * t / warm)
        u = (t - warm) / (1 - warm)
        return peak_lr / 1000 + 0.5 * (peak_lr - peak_lr / 1000) * (1 + math.cos(math.pi * u))
    raise ValueError(f"unknown schedule {schedule!r}")


def peak_lr(tcfg, global_batch: int) -> float:
    """train.lr scaled from lr_base_batch to this global batch: square root (AdamW; Malladi et al.
    2022), linear (SGD; Goyal et al. 2017) or not at all."""
    ratio = global_batch / tcfg.lr_base_batch
    return tcfg.lr * {"sqrt": ratio ** 0.5, "linear": ratio, "none": 1.0}[tcfg.lr_scaling]


def make_optimizer(net: nn.Module, tcfg) -> torch.optim.Optimizer:
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tcfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tcfg.lr)
    return torch.optim.SGD(groups, lr=tcfg.lr, momentum=0.9, nesterov=True)


def channels_last(net: nn.Module) -> nn.Module:
    """Train and evaluate in NHWC: about 1.6x faster for MobileNetV2 on CPU (measured here).
    state_dict() then holds channels-last conv weights; to_numpy makes them C-order again."""
    return net.to(memory_format=torch.channels_last)


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


@torch.no_grad()
def evaluate(net: nn.Module, split: data.Split, batch_size: int, input_size: int) -> dict:
    """Counts, so results from several peers can be added: correct, total, loss_sum."""
    net.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in data.batches(split, batch_size, None, train=False, do_augment=False, size=input_size):
        logits = net(x.contiguous(memory_format=torch.channels_last))
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return {"correct": int(correct), "total": int(total), "loss_sum": float(loss_sum)}
