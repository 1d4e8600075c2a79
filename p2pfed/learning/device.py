"""Where a peer trains (train.device) and in what precision (train.precision).

    auto     CUDA if this host has it, else the CPU. Several peers on one host spread over its
             GPUs: the k-th peer of the host takes GPU k mod G (launch.py --gpus picks them instead)
    cpu      the CPU
    cuda     the host's first (or only) GPU; cuda:K the K-th

The device is the host's business: it is not part of the recipe that peers compare, and a CPU
peer and a GPU peer average together. What they exchange is the same either way: the round state
leaves the device as C-order host arrays, the mean and the digest are computed on the host.
"""
from __future__ import annotations

import re
from contextlib import nullcontext

import torch

from ..config import ConfigError

SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ConfigError):
    """train.device names a device this host does not have; the message says what it has."""


def available() -> list[str]:
    """The devices this host can train on."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]


def resolve(spec: str, local_index: int = 0) -> torch.device:
    """The device for train.device = spec; local_index is this peer's position among the peers of
    its host (auto spreads them over the GPUs)."""
    if not SPEC.fullmatch(spec):
        raise DeviceError(f"train.device = {spec!r} is not a device; use auto, cpu, cuda or cuda:K")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "cpu" or (spec == "auto" and not gpus):
        return torch.device("cpu")
    if spec == "auto":
        return torch.device(f"cuda:{local_index % gpus}")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= gpus:
        have = ", ".join(available())
        raise DeviceError(f"train.device = {spec!r}, but this host has {'no CUDA' if not gpus else f'{gpus} GPU(s)'}"
                          f" (available: {have}); pick one of those, or auto")
    return torch.device(f"cuda:{index}")


def autocast(device: torch.device, precision: str):
    """The autocast context for a training step: bf16 on CUDA (precision "auto" or "bf16"),
    nothing on the CPU (bf16 autocast measured no faster here) or with "fp32"."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)
