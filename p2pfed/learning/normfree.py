"""A normalization-free MobileNetV2 (model.norm = "none"): no BatchNorm, so nothing in the model
depends on the statistics of a peer's own batch, and no exchange per step is needed.

After Brock, De and Smith (2021, "Characterizing signal propagation to close the performance gap
in unnormalized ResNets") and FedWon (Zhuang and Lyu, ICLR 2024), which measured this pairing on
label-skewed CIFAR-10:

- every convolution standardizes its weights per output channel, scaled to keep the variance of
  its output: W' = g * (W - mean(W)) / (std(W) * sqrt(fan_in)), with a learnable gain g
  (initially 1) and a bias where BatchNorm's shift was (ScaledStdConv2d);
- ReLU6 is scaled by 1.7139, the gain that keeps a unit-variance Gaussian input's variance;
- each residual branch ends in a learnable scalar initialized to 0 (SkipInit, De and Smith 2020):
  the block starts as the identity, so depth does not blow the signal up;
- adaptive gradient clipping (train.agc_clip) bounds each unit's gradient relative to its weights.

For export the standardized weights are computed once and the layers become plain Conv2d
(`freeze`), so ONNX and INT8 see an ordinary convolutional network.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .mobilenet import InvertedResidual

RELU_GAIN = 1.7139     # sqrt(2 / (1 - 1/pi)): the variance-preserving gain of ReLU on N(0, 1)


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardized per output channel on every forward pass."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        kwargs["bias"] = True
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.eps = eps
        nn.init.zeros_(self.bias)

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return self.gain * (w - mean) * torch.rsqrt(var * fan_in + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class ScaledReLU6(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x) * RELU_GAIN


class SkipInitResidual(nn.Module):
    """x + alpha * branch(x), alpha a learnable scalar starting at 0."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.conv = branch
        self.skip_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.skip_gain * self.conv(x)


def _std_conv(conv: nn.Conv2d) -> ScaledStdConv2d:
    return ScaledStdConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                           padding=conv.padding, dilation=conv.dilation, groups=conv.groups)


def _convert(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
            setattr(module, name, _std_conv(child))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.ReLU6):
            setattr(module, name, ScaledReLU6())
        else:
            _convert(child)


def convert(net: nn.Module) -> nn.Module:
    """MobileNetV2 (mobilenet.py) without normalization, freshly initialized (in place)."""
    for i, block in enumerate(net.features):
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            _convert(block.conv)
            net.features[i] = SkipInitResidual(block.conv)
        else:
            _convert(block)
    for m in net.modules():
        if isinstance(m, ScaledStdConv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
    return net


def freeze(net: nn.Module) -> nn.Module:
    """Replace each ScaledStdConv2d by a plain Conv2d holding its standardized weight (export)."""
    for name, child in list(net.named_children()):
        if isinstance(child, ScaledStdConv2d):
            plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                              padding=child.padding, dilation=child.dilation, groups=child.groups, bias=True)
            with torch.no_grad():
                plain.weight.copy_(child.standardized_weight())
                plain.bias.copy_(child.bias)
            setattr(net, name, plain)
        else:
            freeze(child)
    return net


@torch.no_grad()
def clip_gradients(parameters, clip: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021): scale each unit's gradient (a row of a
    weight) down to at most clip x the unit's weight norm (at least eps)."""
    for p in parameters:
        if p.grad is None or p.ndim < 2:
            continue
        dims = tuple(range(1, p.ndim))
        w_norm = torch.linalg.vector_norm(p, dim=dims, keepdim=True).clamp_(min=eps)
        g_norm = torch.linalg.vector_norm(p.grad, dim=dims, keepdim=True)
        limit = w_norm * clip
        p.grad.mul_(torch.where(g_norm > limit, limit / g_norm.clamp(min=1e-6), torch.ones_like(g_norm)))
