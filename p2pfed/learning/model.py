"""The model: MobileNetV2 for small images (width, CIFAR stem, input size, starting weights)."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict

import torch
from torch import nn

from . import normfree
from .mobilenet import MobileNetV2

log = logging.getLogger("p2pfed.learning.model")


class ModelError(RuntimeError):
    """The model cannot be built as configured; the message says what to do."""


def build(mcfg, seed: int = 0, classes: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """MobileNetV2 with a num_classes head, from a ModelConfig. classes: the agreed class names in
    output order; a model.weights_file that names its own classes (a consensus.pt) then keeps the
    head rows of every class it shares with them, matched by name."""
    torch.manual_seed(seed)
    net = MobileNetV2(width_mult=mcfg.width_mult)
    if mcfg.pretrained:
        net.load_state_dict(_imagenet_weights(mcfg))
    head: tuple[dict, list[str]] | None = None
    if mcfg.weights_file:
        if not os.path.isfile(mcfg.weights_file):
            raise ModelError(f"model.weights_file {mcfg.weights_file} does not exist")
        try:
            state = torch.load(mcfg.weights_file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelError(f"model.weights_file {mcfg.weights_file} is not a state_dict or consensus.pt "
                             f"({type(e).__name__}: {str(e)[:100]})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):     # a consensus.pt
            named = [str(c) for c in state.get("classes") or []]
            state = state["state_dict"]
            if named:
                head = ({k: v for k, v in state.items() if k.startswith("classifier.")}, named)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.startswith("classifier.")]:
            raise ModelError(f"model.weights_file {mcfg.weights_file} does not fit MobileNetV2 width "
                             f"{mcfg.width_mult}: unexpected {unexpected[:3]}, missing {missing[:3]}")
    in_features = net.classifier[-1].in_features
    net.classifier[-1] = nn.Linear(in_features, mcfg.num_classes)
    if head and classes:
        kept = keep_head(net.classifier[-1], head[0], head[1], list(classes))
        log.info("model.weights_file %s: kept the head of %d of %d classes, matched by name (%s)",
                 mcfg.weights_file, len(kept), len(classes), ", ".join(kept) or "none")
    if mcfg.cifar_stem:
        net.features[0][0].stride = (1, 1)
    if mcfg.norm == "none":
        normfree.convert(net)
    return net


@torch.no_grad()
def keep_head(linear: nn.Linear, state: dict, old: list[str], new: list[str]) -> list[str]:
    """Copy the rows of an earlier head (state: classifier.*.weight/bias, its classes `old`) into
    linear (classes `new`) for every class name both share; the others keep their fresh
    initialisation. Returns the names kept."""
    weight = next((v for k, v in state.items() if k.endswith("weight")), None)
    bias = next((v for k, v in state.items() if k.endswith("bias")), None)
    if weight is None or weight.shape != (len(old), linear.in_features):
        return []
    kept = []
    for i, name in enumerate(new):
        if name in old:
            j = old.index(name)
            linear.weight[i] = weight[j]
            if bias is not None and linear.bias is not None:
                linear.bias[i] = bias[j]
            kept.append(name)
    return kept


def _imagenet_weights(mcfg) -> dict:
    """torchvision's ImageNet weights for MobileNetV2 (downloaded into torch's cache once)."""
    if mcfg.width_mult != 1.0:
        raise ModelError("model.pretrained needs model.width_mult = 1.0 (ImageNet weights exist only for it)")
    try:
        import torchvision
        return torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as e:  # offline and not in torch's cache
        raise ModelError(f"could not get ImageNet weights for MobileNetV2 ({type(e).__name__}: {str(e)[:100]}); "
                         f"offline, set model.weights_file to a local state_dict or model.pretrained = false") from None


def model_args(mcfg) -> dict:
    return asdict(mcfg)


def channels_last(net: nn.Module) -> nn.Module:
    """Train and evaluate in NHWC: about 1.6x faster for MobileNetV2 on CPU (measured here).
    state_dict() then holds channels-last conv weights; to_numpy makes them C-order again."""
    return net.to(memory_format=torch.channels_last)
