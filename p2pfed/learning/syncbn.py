"""Synchronized BatchNorm across peers: every member of a round normalizes each layer by the
statistics of the members' joint batch, and back-propagates through them.

Under label skew each peer's own batch statistics differ from the federation's, so weights
trained with local statistics fit activations that the averaged model never sees. With the
statistics of the joint batch, and the matching sums in the backward pass, a round of one local
step followed by the sample-weighted mean of the members' models is exactly one step of
centralized SGD on the joint batch, whatever the partition (momentum included, as it is linear).

For a member i with averaging weight p_i (its share of the round's sample counts), per channel:

    forward   local [n, sum x, sum x^2]  --sum over members-->  [N, S1, S2]
              mean = S1 / N, var = S2 / N - mean^2 (biased), y = (x - mean) / sqrt(var + eps) * w + b
    backward  local p_i * [sum dy, sum dy * xhat]  --sum over members-->  [A, B]
              dx = w / sqrt(var + eps) * (dy - (A / N + xhat * B / N) / p_i)
              dw = sum dy * xhat (local), db = sum dy (local)

dy is the gradient of the member's own mean loss; scaling its sums by p_i makes A and B the sums
of the gradient of the federation's loss (sum_i p_i L_i), and dividing by p_i again gives the
member its share of that gradient, which the weighted mean then adds up. Running statistics are
updated from the joint mean and the unbiased joint variance, so they stay the same on every
member. The sums are float64, combined in member order by the caller's `combine`, so every
member computes the same mean and variance.

`combine(vector) -> vector` is the one call into the network; this module knows nothing of it
(run/node/peer.py provides it through consensus/stepsync.py). A `combine` that cannot finish raises,
and the exception leaves the step through forward() or backward(): the caller restores the
round's starting state and redoes it. Outside a `synced()` block the layers are plain BatchNorm.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

Combine = Callable[["torch.Tensor"], "torch.Tensor"]    # float64 vector -> its sum over the members


class SyncBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d with the same parameters, buffers and state_dict; synchronized while a
    `synced()` block is active and the module is training."""
    _sync: "_Session | None" = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self._sync
        if session is None or not self.training:
            return super().forward(x)
        out = _SyncBN.apply(x, self.weight, self.bias, self, session)
        self.num_batches_tracked.add_(1)
        return out


class _Session:
    def __init__(self, combine: Combine, share: float):
        if not 0 < share <= 1:
            raise ValueError(f"a member's share of the round's samples must be in (0, 1], got {share}")
        self.combine = combine
        self.share = share


def _sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: sum(x) and sum(x^2), as plain row sums of an (N*H*W, C) view when x is
    channels-last (torch.var_mean over dims 0, 2, 3 is 20x slower on the CPU)."""
    c = x.shape[1]
    if x.is_contiguous(memory_format=torch.channels_last):
        v = x.permute(0, 2, 3, 1).reshape(-1, c)
        return v.sum(0), (v * v).sum(0)
    return x.sum(dim=[0, 2, 3]), (x * x).sum(dim=[0, 2, 3])


class _SyncBN(torch.autograd.Function):
    """The arithmetic runs in PyTorch's fused BatchNorm kernels: an eval-mode batch_norm (given
    mean and variance) for the normalization and for the backward correction,
    native_batch_norm_backward for the local gradient sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn: SyncBatchNorm2d, session: _Session):
        n = x.numel() // x.shape[1]
        s1, s2 = _sums(x)
        local = torch.cat([torch.tensor([float(n)], dtype=torch.float64), s1.to(torch.float64), s2.to(torch.float64)])
        total = session.combine(local)
        c = x.shape[1]
        count = float(total[0])
        mean64 = total[1:1 + c] / count
        var64 = (total[1 + c:] / count - mean64 * mean64).clamp_(min=0.0)
        with torch.no_grad():
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(mean64.to(bn.running_mean.dtype), alpha=m)
            unbiased = var64 * (count / max(count - 1.0, 1.0))
            bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        invstd = torch.rsqrt(var64 + bn.eps).to(x.dtype)
        ctx.save_for_backward(x, weight, mean, var, invstd)
        ctx.session, ctx.count, ctx.n, ctx.eps = session, count, n, bn.eps
        return nn.functional.batch_norm(x, mean, var, weight, bias, training=False, eps=bn.eps)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, var, invstd = ctx.saved_tensors
        session, count, n = ctx.session, ctx.count, ctx.n
        # dx as if this batch were alone (its own means of dy and dy * xhat), and the two local sums
        dx, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True])
        c = x.shape[1]
        total = session.combine(torch.cat([sum_dy.to(torch.float64), sum_dy_xhat.to(torch.float64)]) * session.share)
        a = (total[:c] / (count * session.share)).to(x.dtype)
        b = (total[c:] / (count * session.share)).to(x.dtype)
        # replace the local means by the joint ones: dx += w invstd ((A_l/n - a) + xhat (B_l/n - b))
        k = weight * invstd
        dx = dx + nn.functional.batch_norm(x, mean, var, k * (sum_dy_xhat / n - b), k * (sum_dy / n - a),
                                           training=False, eps=ctx.eps)
        return dx, sum_dy_xhat, sum_dy, None, None


def convert(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a SyncBatchNorm2d holding the same tensors (in place)."""
    for name, child in list(net.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats).to(child.running_mean.device)
            if child.affine:
                new.to(child.weight.dtype)
            new.load_state_dict(child.state_dict())
            setattr(net, name, new)
        else:
            convert(child)
    return net


def layers(net: nn.Module) -> list[SyncBatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, SyncBatchNorm2d)]


@contextmanager
def synced(net: nn.Module, combine: Combine, share: float):
    """Within the block, every SyncBatchNorm2d of net that is training combines its statistics
    through `combine`; `share` is this member's weight in the round's mean (its sample count over
    the members' total)."""
    session = _Session(combine, share)
    mods = layers(net)
    for m in mods:
        m._sync = session
    try:
        yield session
    finally:
        for m in mods:
            m._sync = None
