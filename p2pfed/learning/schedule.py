"""How a run is cut into rounds, and the learning rate over its steps: local steps per round,
epochs, the cadence of evaluation, the learning-rate schedule and its scaling with the global
batch. Pure functions of the config and partition sizes, so every peer computes the same plan
on its own. No torch, no sockets.

A round is one averaging. Its size is either `train.local_steps` (k optimiser steps, the same
on every peer; a list such as [2, 4, 8] grows k over equal parts of the run) or
`train.local_epochs` (each peer passes over that fraction of its own partition). The run
length is `train.epochs` over the average partition, or exactly `train.rounds` rounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    steps: tuple[int, ...]      # local optimiser steps of round r at index r - 1
    steps_per_epoch: int        # steps that make one epoch over this peer's (average) partition

    @property
    def rounds(self) -> int:
        return len(self.steps)

    @property
    def total_steps(self) -> int:
        return sum(self.steps)

    def start_step(self, rnd: int) -> int:
        """Local steps taken before round rnd (1-based) starts."""
        return sum(self.steps[:rnd - 1])

    def epoch_after(self, rnd: int) -> float:
        """Epochs completed once round rnd is committed."""
        return self.start_step(rnd + 1) / self.steps_per_epoch

    def round_of_step(self, step: int) -> int:
        """The round whose training contains global step `step` (0-based)."""
        done = 0
        for r, k in enumerate(self.steps, start=1):
            done += k
            if step < done:
                return r
        return self.rounds

    def evaluates(self, rnd: int, eval_every: int) -> bool:
        """Evaluate after round rnd: every eval_every rounds, or (0) when an epoch boundary is
        crossed; always after the last round."""
        if rnd >= self.rounds:
            return True
        if eval_every > 0:
            return rnd % eval_every == 0
        return int(self.epoch_after(rnd) + 1e-9) > int(self.epoch_after(rnd - 1) + 1e-9)


def merged(plan: Plan, after_round: int, m: int) -> Plan:
    """The plan with every m consecutive rounds after after_round merged into one (m x their
    local steps; the last may hold fewer): the same steps in all, fewer exchanges
    (train.auto_steps)."""
    head, tail = list(plan.steps[:after_round]), plan.steps[after_round:]
    merged_tail = [sum(tail[i:i + m]) for i in range(0, len(tail), max(1, m))]
    return Plan(tuple(head + merged_tail), plan.steps_per_epoch)


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_samples / batch_size))


def growing(total_steps: int, ks: tuple[int, ...]) -> tuple[int, ...]:
    """Rounds covering total_steps: k = ks[i] in the i-th of len(ks) equal parts of the run.
    The last round of the run is cut short so that the total is exact."""
    out: list[int] = []
    done = 0
    while done < total_steps:
        part = min(len(ks) - 1, done * len(ks) // total_steps)
        k = min(ks[part], total_steps - done)
        out.append(k)
        done += k
    return tuple(out)


def make_plan(tcfg, n_samples: int, mean_samples: float) -> Plan:
    """The plan of one peer. n_samples: this peer's partition; mean_samples: the average
    partition (identical on every peer), which sizes epochs when rounds are counted in steps."""
    if tcfg.local_steps:
        spe = steps_per_epoch(math.ceil(mean_samples), tcfg.batch_size)
        ks = tuple(tcfg.local_steps)
        if tcfg.rounds:
            n = tcfg.rounds
            steps = tuple(ks[min(len(ks) - 1, i * len(ks) // n)] for i in range(n))
        else:
            steps = growing(max(1, math.ceil(tcfg.epochs * spe)), ks)
        return Plan(steps, spe)
    spe = steps_per_epoch(n_samples, tcfg.batch_size)
    k = max(1, math.ceil(tcfg.local_epochs * spe))
    if tcfg.max_steps:
        k = min(k, tcfg.max_steps)
    n = tcfg.rounds or max(1, math.ceil(tcfg.epochs / tcfg.local_epochs - 1e-9))
    return Plan((k,) * n, spe)


def input_size_at(step: int, total_steps: int, size: int, small: int, until: float) -> int:
    """The training image size at global step `step` (pure): `small` pixels in the first `until`
    of the run's steps (progressive resizing: cheaper steps while the weights are far from
    their end), `size` after. small = 0 (or >= size) is off."""
    if small <= 0 or small >= size or step >= until * total_steps:
        return size
    return small


def lr_at(step: int, total_steps: int, peak_lr: float, schedule: str) -> float:
    """Learning rate at global step `step` of `total_steps` (pure)."""
    if schedule == "constant" or total_steps <= 1:
        return peak_lr
    t = min(1.0, step / (total_steps - 1))
    if schedule == "cosine":
        return 0.5 * peak_lr * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":  # linear warm-up over 15%, cosine down to peak/1000
        warm = 0.15
        if t < warm:
            return peak_lr * (0.04 + 0.96 * t / warm)
        u = (t - warm) / (1 - warm)
        return peak_lr / 1000 + 0.5 * (peak_lr - peak_lr / 1000) * (1 + math.cos(math.pi * u))
    raise ValueError(f"unknown schedule {schedule!r}")


def peak_lr(tcfg, global_batch: int) -> float:
    """train.lr scaled from lr_base_batch to this global batch: square root (AdamW; Malladi et al.
    2022), linear (SGD; Goyal et al. 2017) or not at all."""
    ratio = global_batch / tcfg.lr_base_batch
    return tcfg.lr * {"sqrt": ratio ** 0.5, "linear": ratio, "none": 1.0}[tcfg.lr_scaling]
