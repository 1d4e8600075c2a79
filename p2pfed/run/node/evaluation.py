"""Evaluating a round's consensus, at the eval cadence.

Each member evaluates the model on its own slice of the test set (the test set is cut into one
part per member, so the members' counts add up to one pass over it), or, with its own data
(data.partition = "own"), on its own site's whole test folder: the summary then shows how the
one model serves each site and all of them pooled. The model evaluated, and
later exported, is the round's model part with BatchNorm statistics pooled over all members'
data (consensus/pooling.py gathers and agrees; learning/bnstats.py computes the local sums and
the pooled statistics), or the plain model part if pooling is off or fails. The pooling pass sees
the training augmentation, because that is the input the weights were trained on. Training then
goes on from the round's result itself.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ...consensus import pooling
from ...consensus.outcome import Committed
from ...learning import augment, bnstats, capture, datasets, evaluate, partition

log = logging.getLogger("p2pfed.run.evaluation")

KEEP_DECODED_BYTES = 64 << 20    # own test folders up to this decoded size are decoded once; larger ones stream


class Evaluator:
    def __init__(self, cfg, me: int, train_split: datasets.Split, test_split: datasets.Split | None, transport,
                 mailbox, secure=None, decoder=None):
        self.cfg = cfg
        self.secure = secure          # secure aggregation: the BatchNorm sums travel masked
        self._pooled: tuple[str, Committed] | None = None   # (round digest, its pooled model), the last one
        self.me = me
        self.train_split = train_split
        self.test_split = test_split
        self.transport = transport
        self.mailbox = mailbox
        self._slice: tuple[tuple, datasets.Split] | None = None
        self.decoder = decoder        # photos: the decoding threads (photos.Decoder)

    def split(self, members: tuple[int, ...]) -> datasets.Split | None:
        """My slice of the test set for this member list (with own data: my own test folder,
        whole; None without one). Photos are decoded once and kept while that stays under
        KEEP_DECODED_BYTES, else streamed batch by batch at each evaluation."""
        if self.test_split is None:
            return None
        key = () if self.cfg.data.partition == "own" else tuple(members)
        if self._slice is None or self._slice[0] != key:
            t = self.test_split
            if key:
                parts = partition.partition_iid(len(t), len(members), self.cfg.data.seed + 1)
                t = datasets.select(t, parts[list(members).index(self.me)])
            size = self.cfg.model.input_size
            if t.images is None and (not t.stream or len(t) * 3 * size * size <= KEEP_DECODED_BYTES):
                t = t.loaded()
            self._slice = (key, t)
        return self._slice[1]

    def unreadable(self) -> dict[str, str]:
        """The test images skipped as unreadable so far: file -> why."""
        out = dict(self.test_split.bad) if self.test_split is not None else {}
        if self._slice is not None:
            out.update(self._slice[1].bad)
        if self.decoder is not None:
            out.update(self.decoder.bad)
        return out

    def model_to_evaluate(self, net, committed: Committed, pool: bool = True) -> Committed:
        """The round's model part, with pooled BatchNorm statistics when that is on and every
        member's share arrived (else the plain model part). Not with frozen BatchNorm (FixBN),
        whose weights were trained with the frozen statistics, nor without BatchNorm."""
        plain = committed.model()
        n = self.cfg.train.bn_pool_images
        if not n or not pool or self.cfg.model.norm != "batch":
            return plain
        if self.secure and self._pooled and self._pooled[0] == committed.digest:
            # a rolled-back round holds the weights pooled before: pooling them again among fewer members
            # would reveal the missing member's statistics by subtraction; the pooled model is the same
            before = self._pooled[1]
            return Committed(committed.round, before.digest, committed.members, before.state, bn_pooled=True)
        # a fixed random sample (my partition lists its images class by class), augmented as in
        # training: the weights were fitted to the statistics of augmented images, and clean-image
        # statistics cost 3.6 points on the dev test split (docs/history/recipe.md, "The federated
        # recipe (issue 13)")
        seed = augment.peer_seed(self.cfg.data.seed, self.me)
        aug = self.cfg.train.augment
        if self.train_split.stream:     # photos: decoded with the training crops, seeded
            files = datasets.spread_sample_files(self.train_split, n, seed)
            rng = torch.Generator().manual_seed(seed)
            seeds = torch.randint(0, 2 ** 62, (len(files),), generator=rng).tolist() if aug else None
            images, _ = self.decoder.decode(files, self.cfg.model.input_size, seeds)
            sample = datasets.Split(np.zeros(len(images), dtype=np.int64), self.train_split.classes, images=images)
            batches = augment.batches(sample, self.cfg.train.batch_size, None, train=False, do_augment=False,
                                      size=self.cfg.model.input_size)
        else:
            sample = datasets.spread_sample(self.train_split, n, seed)
            batches = augment.batches(sample, self.cfg.train.batch_size,
                                      torch.Generator().manual_seed(seed) if aug else None,
                                      train=aug, do_augment=aug, size=self.cfg.model.input_size)
        layers = list(bnstats.bn_layers(net))
        got = pooling.pool(self.transport, self.mailbox, committed.round, committed.members,
                           bnstats.collect(net, batches), lambda total: bnstats.apply(plain.state, total, layers),
                           self.cfg.averaging.exchange_timeout_s, self.secure)
        if isinstance(got, str):
            log.warning("%s; evaluating the plain consensus", got)
            return plain
        pooled = Committed(committed.round, got[1], committed.members, got[0], bn_pooled=True)
        self._pooled = (committed.digest, pooled)
        return pooled

    def run(self, net, committed: Committed, pool: bool = True) -> tuple[Committed, dict]:
        """Evaluate the round's consensus; net holds the round's result before and after.
        Returns (the evaluated model, the stats for the report)."""
        started = time.monotonic()
        evaluated = self.model_to_evaluate(net, committed, pool)
        if evaluated.bn_pooled:
            net.load_state_dict(capture.to_torch(evaluated.state))
        test = self.split(committed.members)
        if test is None:        # a site without a test folder adds nothing to the counts
            k = self.cfg.model.num_classes
            stats = {"correct": 0, "total": 0, "loss_sum": 0.0, "class_correct": [0] * k, "class_total": [0] * k}
        else:
            stats = evaluate.evaluate(net, test, self.cfg.train.eval_batch_size, self.cfg.model.input_size,
                                      self.cfg.model.num_classes, self.decoder)
        if evaluated.bn_pooled:                    # training goes on from the round's result
            net.load_state_dict(capture.to_torch(committed.model().state))
            stats["bn_digest"] = evaluated.digest
        stats["bn_pooled"] = evaluated.bn_pooled
        stats["eval_s"] = round(time.monotonic() - started, 3)
        return evaluated, stats
