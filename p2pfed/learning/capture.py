"""Torch state in and out of numpy: the model's state_dict and the optimizer's per-parameter
buffers, as the C-order float arrays that the peers average and hash. How these parts are named
and ordered in a round state is the consensus layer's (consensus/roundstate.py).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

BUFFERS = {"sgd": ("momentum_buffer",), "adamw": ("exp_avg", "exp_avg_sq")}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def to_numpy(state_dict) -> "OrderedDict[str, np.ndarray]":
    """A state_dict as C-order numpy arrays on the host (channels-last weights become C-order
    copies; CPU tensors may share memory)."""
    return OrderedDict((k, _numpy(v)) for k, v in state_dict.items())


class HostBuffers:
    """Pinned host tensors that a GPU model's state is copied into, reused round after round: the
    copies run asynchronously and end in one synchronize. The arrays returned alias the buffers,
    so they hold until the next call (a round state is flattened for the exchange before that)."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def to_numpy(self, state_dict) -> "OrderedDict[str, np.ndarray]":
        out, on_gpu = OrderedDict(), False
        for k, v in state_dict.items():
            v = v.detach()
            if v.device.type == "cpu":
                out[k] = _numpy(v)
                continue
            buf = self._bufs.get(k)
            if buf is None or buf.shape != v.shape or buf.dtype != v.dtype:
                buf = self._bufs[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
            buf.copy_(v, non_blocking=True)          # C order whatever the source's memory format
            out[k], on_gpu = buf.numpy(), True
        if on_gpu:
            torch.cuda.synchronize()
        return out


def to_torch(state: dict) -> "OrderedDict[str, torch.Tensor]":
    """Tensors sharing the arrays' memory (load_state_dict copies them into the model)."""
    return OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in state.items())


def param_zeros(net: nn.Module) -> "OrderedDict[str, np.ndarray]":
    """A float32 zero array per trainable parameter, in parameter order."""
    return OrderedDict((n, np.zeros(p.shape, np.float32)) for n, p in net.named_parameters())


def optimizer_buffers(net: nn.Module, opt: torch.optim.Optimizer, kind: str) -> "OrderedDict[str, np.ndarray]":
    """'<param>.<buffer>' -> the optimizer's buffer (zeros before the first step, which is what
    the optimizer starts from), in parameter order."""
    out = OrderedDict()
    for name, p in net.named_parameters():
        st = opt.state.get(p, {})
        for buf in BUFFERS[kind]:
            out[f"{name}.{buf}"] = _numpy(st[buf]) if buf in st else np.zeros(p.shape, np.float32)
    return out


def load_optimizer_buffers(net: nn.Module, opt: torch.optim.Optimizer, kind: str, buffers: dict,
                           global_step: int) -> None:
    """Put averaged buffers into the optimizer. AdamW's `step` becomes the global step, so bias
    correction matches the moments' age on every peer."""
    for name, p in net.named_parameters():
        st = opt.state[p]
        for buf in BUFFERS[kind]:
            # empty_like keeps the parameter's memory format (channels_last convolutions)
            st[buf] = torch.empty_like(p, memory_format=torch.preserve_format).copy_(
                torch.from_numpy(np.asarray(buffers[f"{name}.{buf}"])))
        if kind == "adamw":
            st["step"] = torch.tensor(float(global_step))
