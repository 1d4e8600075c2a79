"""SCAFFOLD control variates (Karimireddy et al. 2020) for label-skewed partitions.

Local steps on a skewed partition drift towards that partition's optimum. SCAFFOLD corrects each
local gradient g by the difference between the federation's mean gradient c and this peer's own
c_i, so every peer steps along an estimate of the global gradient:

    g  <-  g + (c - c_i)

After a round each peer sets c_i to the mean of the raw (uncorrected) loss gradients it computed
in that round's local steps. With plain SGD that is exactly SCAFFOLD's option II, (x - y_i) / (K lr)
- c + c_i; unlike option II it stays the mean gradient under momentum and a changing learning rate. The new c is the sample-weighted mean of the peers' c_i: the round state carries c_i as
`scaffold.<param>` next to the weights, so the round's one exact all-reduce averages both, and
every member ends the round with the same c (the digest covers it). c_i stays local.

Round 1 starts from c = c_i = 0, so its steps are plain local SGD. A peer that has not yet
trained a round in this process (it joined late, or resumed from a checkpoint) takes c_i = c
when it loads a round state, which makes its first round uncorrected. A peer that downloads the
consensus after training (a dissenter, a straggler) keeps its own c_i: it is still its mean
gradient of its last round. The correction
is applied to the loss gradient before the optimizer step, so momentum and weight decay act on
the corrected gradient as usual. Weighting the mean by sample count keeps c the gradient of the
weighted objective that the averaged model minimises.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .capture import param_zeros

class Controls:
    """This peer's control variate c_i and the federation's c, and the gradient hook of a round.

    Use: `hook = controls.round_hook()`; pass it to model.train_steps, which calls it after each
    backward pass; then `controls.finish_round()` makes the round's mean raw gradient the new c_i."""

    def __init__(self, net: nn.Module):
        self.params = list(net.named_parameters())
        self.local = param_zeros(net)            # c_i, parameter name -> array
        self.common = param_zeros(net)           # c (the last committed round's)
        self._sums: list[torch.Tensor] | None = None
        self._steps = 0
        self.trained = False                     # c_i is my own mean gradient of a round

    def set_common(self, common: dict) -> None:
        """Take c (parameter name -> array, a committed round's); without a c_i of my own yet, c_i = c."""
        self.common = OrderedDict((k, np.array(common[k], np.float32, copy=True)) for k in self.common)
        if not self.trained:
            self.local = OrderedDict((k, v.copy()) for k, v in self.common.items())

    def correction(self) -> list[torch.Tensor]:
        """c - c_i per parameter, float32, in parameter order."""
        return [torch.from_numpy(np.subtract(self.common[n], self.local[n], dtype=np.float32)).to(p.device)
                for n, p in self.params]

    def round_hook(self):
        """The per-step gradient hook for one round's local steps."""
        corr = self.correction()
        self._sums = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for _, p in self.params]
        self._steps = 0

        def hook() -> None:
            for (_, p), s, c in zip(self.params, self._sums, corr):
                if p.grad is None:
                    continue
                s.add_(p.grad)
                p.grad.add_(c)
            self._steps += 1
        return hook

    def finish_round(self) -> None:
        """c_i = the mean raw gradient of the round's steps (unchanged if no step ran)."""
        if self._sums is None or not self._steps:
            return
        self.local = OrderedDict((n, (s / self._steps).cpu().numpy()) for (n, _), s in zip(self.params, self._sums))
        self._sums = None
        self.trained = True
