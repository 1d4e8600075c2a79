"""BatchNorm statistics pooled exactly over all peers' data, for the averaged weights.

Averaging running_mean/running_var across peers gives statistics that belong to none of the
models (and averaging variances drops the variance between the peers' means). Before
evaluation and export each member instead runs a few batches of its own data through the
consensus weights (train-mode BatchNorm, as in SWA's update_bn) and sums, per channel of every
BatchNorm layer, the count, sum(x) and sum(x^2) of the layer's input. One small all-gather
(consensus/pooling.py) adds them, in member order and float64, so every member computes the
same bytes:

    mean = sum_i S1_i / sum_i n_i        var = (sum_i S2_i / sum_i n_i - mean^2) * n / (n - 1)

These replace running_mean and running_var (the unbiased variance, as BatchNorm keeps). The
round's consensus itself is untouched (invariant 1); the pooled model is a second, derived
state with its own digest, checked like a round's.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn




def bn_layers(net: nn.Module) -> "OrderedDict[str, nn.modules.batchnorm._BatchNorm]":
    return OrderedDict((name, m) for name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def vector_length(net: nn.Module) -> int:
    """Length of a stats vector: per layer one count, then C sums, then C sums of squares."""
    return sum(1 + 2 * m.num_features for m in bn_layers(net).values())


@torch.no_grad()
def collect(net: nn.Module, batches) -> np.ndarray:
    """Per-BN-layer [count, S1 (C), S2 (C)] of the layers' inputs over these batches, float64.
    The model runs in train mode (batch statistics), its buffers are left as they were."""
    layers = bn_layers(net)
    sums = {name: [0, torch.zeros(m.num_features, dtype=torch.float64), torch.zeros(m.num_features,
                                                                                    dtype=torch.float64)]
            for name, m in layers.items()}
    saved = {k: v.clone() for k, v in net.state_dict().items()}

    def hook(name):
        def fn(module, inputs):
            x = inputs[0].detach().to(torch.float64)
            dims = [d for d in range(x.ndim) if d != 1]
            s = sums[name]
            s[0] += x.numel() // x.shape[1]
            s[1] += x.sum(dim=dims).cpu()
            s[2] += (x * x).sum(dim=dims).cpu()
        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    was_training = net.training
    try:
        net.train()
        dev = next(net.parameters()).device
        for x, _ in batches:
            net(x.to(dev).contiguous(memory_format=torch.channels_last))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
        net.load_state_dict(saved)
    parts = []
    for n, s1, s2 in sums.values():
        parts += [np.array([n], np.float64), s1.numpy(), s2.numpy()]
    return np.concatenate(parts) if parts else np.zeros(0)


def apply(state: dict, total: np.ndarray, layer_names: list[str]) -> "OrderedDict[str, np.ndarray]":
    """A copy of `state` whose BN running_mean/running_var are the pooled statistics."""
    out = OrderedDict((k, v) for k, v in state.items())
    offset = 0
    for name in layer_names:
        c = state[f"{name}.running_mean"].size
        n = total[offset]
        s1, s2 = total[offset + 1:offset + 1 + c], total[offset + 1 + c:offset + 1 + 2 * c]
        offset += 1 + 2 * c
        if n < 2:
            continue
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0) * (n / (n - 1))
        out[f"{name}.running_mean"] = mean.astype(state[f"{name}.running_mean"].dtype)
        out[f"{name}.running_var"] = var.astype(state[f"{name}.running_var"].dtype)
    return out
