"""Evaluation maths: counts that several peers' slices of a test set (or sites' test folders) add
up, overall and per class."""
from __future__ import annotations

import torch
from torch import nn

from . import augment
from .datasets import Split


@torch.no_grad()
def evaluate(net: nn.Module, split: Split, batch_size: int, input_size: int, num_classes: int = 0,
             decoder=None) -> dict:
    """Counts, so results from several peers can be added: correct, total, loss_sum, and per
    class (the agreed output index) class_correct and class_total. A streamed split (photos) is
    decoded batch by batch by decoder (photos.Decoder) with the evaluation rule."""
    net.eval()
    dev = next(net.parameters()).device
    correct, total, loss_sum = 0, 0, 0.0
    k = num_classes or len(split.classes)
    class_correct = torch.zeros(k, dtype=torch.int64)
    class_total = torch.zeros(k, dtype=torch.int64)
    if split.stream:
        batches = ((augment.normalize(x, input_size), y)
                   for x, y in decoder.chunks(split.files, split.labels, split.size or input_size, batch_size))
    else:
        batches = augment.batches(split, batch_size, None, train=False, do_augment=False, size=input_size)
    for x, y in batches:
        x, y = x.to(dev), y.to(dev)
        logits = net(x.contiguous(memory_format=torch.channels_last))
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        hit = (logits.argmax(1) == y).cpu()
        correct += hit.sum().item()
        total += len(y)
        class_total += torch.bincount(y.cpu(), minlength=k)[:k]
        class_correct += torch.bincount(y.cpu()[hit], minlength=k)[:k]
    return {"correct": int(correct), "total": int(total), "loss_sum": float(loss_sum),
            "class_correct": class_correct.tolist(), "class_total": class_total.tolist()}
