"""Evaluation maths: counts that several peers' slices of a test set add up."""
from __future__ import annotations

import torch
from torch import nn

from . import augment
from .datasets import Split


@torch.no_grad()
def evaluate(net: nn.Module, split: Split, batch_size: int, input_size: int) -> dict:
    """Counts, so results from several peers can be added: correct, total, loss_sum."""
    net.eval()
    dev = next(net.parameters()).device
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in augment.batches(split, batch_size, None, train=False, do_augment=False, size=input_size):
        x, y = x.to(dev), y.to(dev)
        logits = net(x.contiguous(memory_format=torch.channels_last))
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return {"correct": int(correct), "total": int(total), "loss_sum": float(loss_sum)}
