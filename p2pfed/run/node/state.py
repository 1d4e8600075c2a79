"""A peer's round state: its torch model and optimizer, and what it carries from the last
committed round, in and out of the agreed numpy round state (consensus/roundstate.py names
the parts; learning/capture.py moves them in and out of torch).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from torch import nn

from ...consensus import outer, roundstate
from ...learning import capture


def capture_state(net: nn.Module, opt, tcfg, carried: dict | None = None, copy: bool = False,
                  buffers: capture.HostBuffers | None = None) -> "OrderedDict[str, np.ndarray]":
    """The round state of this peer now. `carried` holds scaffold.*, outer.* and auto.* entries
    (missing ones are zeros). copy=False may share the model's memory (or `buffers`' pinned memory)."""
    have = roundstate.split(carried or {})
    zeros = capture.param_zeros(net)
    parts = roundstate.Parts(
        model=(buffers.to_numpy if buffers else capture.to_numpy)(net.state_dict()),
        optimizer=capture.optimizer_buffers(net, opt, tcfg.optimizer) if tcfg.average_optimizer_state else OrderedDict(),
        scaffold=OrderedDict((n, have.scaffold.get(n, z)) for n, z in zeros.items()) if tcfg.scaffold else OrderedDict(),
        outer=OrderedDict((n, have.outer.get(n, z)) for n, z in zeros.items()) if tcfg.outer_momentum > 0
        else OrderedDict(),
        auto=OrderedDict((n, have.auto.get(n, np.zeros(2, np.float32))) for n in ("cost", "choice"))
        if tcfg.auto_steps else OrderedDict())
    state = roundstate.compose(parts)
    return OrderedDict((k, v.copy()) for k, v in state.items()) if copy else state


def restore_state(net: nn.Module, opt, tcfg, state: dict, global_step: int) -> "OrderedDict[str, np.ndarray]":
    """Load a round state: the model into net, averaged optimizer buffers into opt. Returns the
    scaffold.* and outer.* entries (copies) for the caller to carry."""
    parts = roundstate.split(state)
    net.load_state_dict(capture.to_torch(parts.model))
    if tcfg.average_optimizer_state:
        capture.load_optimizer_buffers(net, opt, tcfg.optimizer, parts.optimizer, global_step)
    return roundstate.carried(state)


def outer_post(tcfg, committed, template: dict):
    """The outer step as a function of the round's mean (None when train.outer_momentum = 0).
    Its anchor is the last committed round state, the same on every member (the digest checks
    it). Before any commit there is no agreed anchor, so the first result is the mean itself with
    zero momentum: the peers' initial models need not be bit-identical."""
    if not tcfg.outer_momentum:
        return None
    if committed is None:
        return lambda mean: outer.start(mean, template)
    previous = committed.state
    return lambda mean: outer.apply(mean, previous, tcfg.outer_lr, tcfg.outer_momentum)
