"""What the peers agree on in a round: the model's state_dict and, if the config asks for them,

    optimizer.<param>.<buffer>   the local optimizer's per-parameter buffers (SGD: momentum_buffer;
                                 AdamW: exp_avg, exp_avg_sq), averaged with the weights
                                 (train.average_optimizer_state)
    scaffold.<param>             SCAFFOLD's control variate (train.scaffold): a peer sends its own
                                 c_i, the mean is the federation's c (scaffold.py)
    outer.<param>                the outer momentum (train.outer_momentum > 0): identical on every
                                 member, never exchanged, derived from the round's mean (outer.py)

One OrderedDict of numpy arrays, in that order (model, optimizer, scaffold, outer). It is what the
all-reduce averages (every entry but outer.*), what the digest covers, what a peer serves to one
that downloads, and what a checkpoint restores. With neither option it is the state_dict alone,
so the protocol is unchanged.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from . import averaging
from .scaffold import PREFIX as SCAFFOLD

OPT = "optimizer."
OUTER = "outer."
BUFFERS = {"sgd": ("momentum_buffer",), "adamw": ("exp_avg", "exp_avg_sq")}


def is_derived(name: str) -> bool:
    """Entries every member computes itself after the mean (never sent in part/reduced)."""
    return name.startswith(OUTER)


def model_part(state: dict) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v) for k, v in state.items() if not k.startswith((OPT, SCAFFOLD, OUTER)))


def model_of(state: dict, digest: str) -> tuple["OrderedDict[str, np.ndarray]", str]:
    """The model part of a round state and its digest (the state's digest when there is nothing else)."""
    model = model_part(state)
    return model, digest if len(model) == len(state) else averaging.digest(model)


def exchanged(state: dict) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v) for k, v in state.items() if not is_derived(k))


def param_names(net: nn.Module) -> list[str]:
    return [n for n, _ in net.named_parameters()]


def to_torch(state: dict) -> "OrderedDict[str, torch.Tensor]":
    """Tensors sharing the arrays' memory (load_state_dict copies them into the model)."""
    return OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in state.items())


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def to_numpy(state_dict) -> "OrderedDict[str, np.ndarray]":
    """A state_dict as C-order numpy arrays (channels-last weights become C-order copies)."""
    return OrderedDict((k, _numpy(v)) for k, v in state_dict.items())


def capture(net: nn.Module, opt: torch.optim.Optimizer, tcfg, carried: dict | None = None,
            copy: bool = False) -> "OrderedDict[str, np.ndarray]":
    """The round state of this peer now. `carried` holds the scaffold.* and outer.* entries
    (missing ones are zeros). Optimizer buffers that do not exist yet (no step taken) are zeros,
    which is what the optimizer starts from. copy=False may share the model's memory."""
    carried = carried or {}
    out = to_numpy(net.state_dict())
    if tcfg.average_optimizer_state:
        for name, p in net.named_parameters():
            st = opt.state.get(p, {})
            for buf in BUFFERS[tcfg.optimizer]:
                out[f"{OPT}{name}.{buf}"] = _numpy(st[buf]) if buf in st else np.zeros(p.shape, np.float32)
    for prefix, on in ((SCAFFOLD, tcfg.scaffold), (OUTER, tcfg.outer_momentum > 0)):
        if on:
            for name, p in net.named_parameters():
                out[prefix + name] = carried.get(prefix + name, np.zeros(p.shape, np.float32))
    return OrderedDict((k, v.copy()) for k, v in out.items()) if copy else out


def restore(net: nn.Module, opt: torch.optim.Optimizer, tcfg, state: dict, global_step: int) -> dict:
    """Load a round state: the model into net, averaged optimizer buffers into opt. Returns the
    scaffold.* and outer.* entries (copies) for the caller to keep."""
    net.load_state_dict(to_torch(model_part(state)))
    if tcfg.average_optimizer_state:
        for name, p in net.named_parameters():
            st = opt.state[p]
            for buf in BUFFERS[tcfg.optimizer]:
                # empty_like keeps the parameter's memory format (channels_last convolutions)
                st[buf] = torch.empty_like(p, memory_format=torch.preserve_format).copy_(
                    torch.from_numpy(np.asarray(state[f"{OPT}{name}.{buf}"])))
            if tcfg.optimizer == "adamw":        # bias correction matches the averaged moments' age
                st["step"] = torch.tensor(float(global_step))
    return OrderedDict((k, np.array(v, copy=True)) for k, v in state.items() if k.startswith((SCAFFOLD, OUTER)))
