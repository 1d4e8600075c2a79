"""What the peers agree on in a round: the names and order of the round state.

A round state is one OrderedDict of numpy arrays, in this order:

    <tensor>                     the model's state_dict
    optimizer.<param>.<buffer>   the local optimizer's per-parameter buffers (SGD: momentum_buffer;
                                 AdamW: exp_avg, exp_avg_sq), averaged with the weights
                                 (train.average_optimizer_state)
    scaffold.<param>             SCAFFOLD's control variate (train.scaffold): a peer sends its own
                                 c_i, the mean is the federation's c
    outer.<param>                the outer momentum (train.outer_momentum > 0): identical on every
                                 member, never exchanged, derived from the round's mean (outer.py)
    auto.cost, auto.choice       measured costs and the choice of local steps (train.auto_steps;
                                 autosteps.py), averaged like the rest

It is what the all-reduce averages (every entry but outer.*), what the digest covers, what a
peer serves to one that downloads, and what a checkpoint restores. With no option on it is the
state_dict alone. This module only names and orders; learning/capture.py moves the parts in and
out of torch. Pure: numpy only.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from . import digest as digest_mod

OPT = "optimizer."
SCAFFOLD = "scaffold."
OUTER = "outer."
AUTO = "auto."
EXTRAS = (OPT, SCAFFOLD, OUTER, AUTO)

State = "OrderedDict[str, np.ndarray]"


@dataclass
class Parts:
    """A round state cut into its parts, names without their prefix."""
    model: "OrderedDict[str, np.ndarray]"
    optimizer: "OrderedDict[str, np.ndarray]" = field(default_factory=OrderedDict)
    scaffold: "OrderedDict[str, np.ndarray]" = field(default_factory=OrderedDict)
    outer: "OrderedDict[str, np.ndarray]" = field(default_factory=OrderedDict)
    auto: "OrderedDict[str, np.ndarray]" = field(default_factory=OrderedDict)


def _prefixed(parts: Parts) -> tuple:
    """(prefix, part) of every part but the model, in the order of a round state."""
    return (OPT, parts.optimizer), (SCAFFOLD, parts.scaffold), (OUTER, parts.outer), (AUTO, parts.auto)


def compose(parts: Parts) -> "OrderedDict[str, np.ndarray]":
    """The round state of these parts, in the order above."""
    out = OrderedDict(parts.model)
    for prefix, part in _prefixed(parts):
        out.update((prefix + k, v) for k, v in part.items())
    return out


def split(state: dict) -> Parts:
    """The parts of a round state (the arrays are shared, not copied)."""
    parts = Parts(OrderedDict())
    for k, v in state.items():
        for prefix, part in _prefixed(parts):
            if k.startswith(prefix):
                part[k[len(prefix):]] = v
                break
        else:
            parts.model[k] = v
    return parts


def is_derived(name: str) -> bool:
    """Entries every member computes itself after the mean (never sent in part/reduced)."""
    return name.startswith(OUTER)


def model_part(state: dict) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v) for k, v in state.items() if not k.startswith(EXTRAS))


def model_of(state: dict, state_digest: str) -> tuple["OrderedDict[str, np.ndarray]", str]:
    """The model part of a round state and its digest (the state's digest when there is nothing else)."""
    model = model_part(state)
    return model, state_digest if len(model) == len(state) else digest_mod.digest(model)


def exchanged(state: dict) -> "OrderedDict[str, np.ndarray]":
    """The entries the all-reduce averages."""
    return OrderedDict((k, v) for k, v in state.items() if not is_derived(k))


def carried(state: dict) -> "OrderedDict[str, np.ndarray]":
    """Copies of the scaffold.*, outer.* and auto.* entries: what a peer keeps from a committed
    round besides the model and the optimizer buffers."""
    return OrderedDict((k, np.array(v, copy=True)) for k, v in state.items()
                       if k.startswith((SCAFFOLD, OUTER, AUTO)))


def nbytes(state: dict) -> int:
    return sum(np.asarray(v).nbytes for v in state.values())
