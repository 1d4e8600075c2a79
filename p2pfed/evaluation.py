"""Evaluating a round's consensus, at the eval cadence.

Each member evaluates the model on its own slice of the test set (the test set is cut into one
part per member, so the members' counts add up to one pass over it). The model evaluated, and
later exported, is the round result's model part with BatchNorm statistics pooled over all
members' data (bnstats.py), or the plain model part if pooling is off or fails. The pooling
pass sees the training augmentation, because that is the input the weights were trained on. Training then
goes on from the round's result itself.
"""
from __future__ import annotations

import time

import torch

from . import bnstats, data, model, roundstate


class Evaluator:
    def __init__(self, cfg, me: int, train_split: data.Split, test_split: data.Split, transport, mailbox):
        self.cfg = cfg
        self.me = me
        self.train_split = train_split
        self.test_split = test_split
        self.transport = transport
        self.mailbox = mailbox
        self._cache: dict = {}

    def split(self, members: list[int]) -> data.Split:
        """My slice of the test set for this member list."""
        key = (tuple(members), self.me)
        if key not in self._cache:
            parts = data.partition_iid(len(self.test_split), len(members), self.cfg.data.seed + 1)
            self._cache = {key: self.test_split.subset(parts[members.index(self.me)])}
        return self._cache[key]

    def model_to_evaluate(self, net, rnd: int, result_state: dict, result_digest: str, members: list[int]) -> dict:
        """{"round", "state", "digest", "bn_pooled"}: the model part of the result, with pooled
        BatchNorm statistics when that is on and every member's share arrived."""
        state, digest = roundstate.model_of(result_state, result_digest)
        plain = {"round": rnd, "state": state, "digest": digest, "bn_pooled": False}
        n = self.cfg.train.bn_pool_images
        if not n:
            return plain
        # a fixed random sample (my partition lists its images class by class), augmented as in
        # training: the weights were fitted to the statistics of augmented images, and clean-image
        # statistics cost 3.6 points on the dev test split (docs/benchmarks.md)
        seed = self.cfg.data.seed * 1000 + self.me
        sample = data.spread_sample(self.train_split, n, seed)
        aug = self.cfg.train.augment
        batches = data.batches(sample, self.cfg.train.batch_size, torch.Generator().manual_seed(seed) if aug else None,
                               train=aug, do_augment=aug, size=self.cfg.model.input_size)
        got = bnstats.pool(net, state, batches, self.transport, self.mailbox, members, rnd,
                           self.cfg.averaging.exchange_timeout_s)
        if got is None:
            return plain
        return {"round": rnd, "state": got[0], "digest": got[1], "bn_pooled": True}

    def run(self, net, rnd: int, result_state: dict, result_digest: str, members: list[int]) -> tuple[dict, dict]:
        """Evaluate the round's consensus; net holds the round's result before and after.
        Returns (the evaluated model as model_to_evaluate gives it, the stats for the report)."""
        started = time.monotonic()
        evaluated = self.model_to_evaluate(net, rnd, result_state, result_digest, members)
        if evaluated["bn_pooled"]:
            net.load_state_dict(roundstate.to_torch(evaluated["state"]))
        stats = model.evaluate(net, self.split(members), self.cfg.train.eval_batch_size, self.cfg.model.input_size)
        if evaluated["bn_pooled"]:                    # training goes on from the round's result
            net.load_state_dict(roundstate.to_torch(roundstate.model_part(result_state)))
            stats["bn_digest"] = evaluated["digest"]
        stats["bn_pooled"] = evaluated["bn_pooled"]
        stats["eval_s"] = round(time.monotonic() - started, 3)
        return evaluated, stats
