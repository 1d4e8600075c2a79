"""One peer process, round after round:

    train      k local steps on my partition (trainer.py); the network thread keeps heartbeating
    average    ready, group, butterfly exchange, digest agreement (consensus/allreduce.py),
               returned as a value: Averaged, Download or Failed
    commit     load the result and serve it to late peers, or download the consensus instead
    evaluate   at the eval cadence: pooled BatchNorm statistics, my slice of the test set
    checkpoint at the checkpoint cadence
    report     my round's stats to everyone (the writer's summary is built from them)
    advance    the next round (the one place the round number moves)

With synchronized BatchNorm (train.batchnorm = "sync") the group forms first and its members
train together, then average (train_synced). Every stage change goes through
StageMachine.enter (stages.py), which updates the heartbeat, the metrics and so the live view.
At the end the writer writes the outputs (finish.py).
"""
from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch

from ... import config
from ...consensus import compress, presence, recipe, roundstate
from ...consensus.digest import digest as state_digest
from ...consensus.allreduce import AllReduce, Progress
from ...consensus.download import download
from ...consensus.mailbox import Mailbox
from ...consensus.masked import Secure
from ...consensus.outcome import Averaged, Committed, Download, Failed, RoundError
from ...consensus.stepsync import StepSync
from ...learning import datasets, photos, schedule, train
from ...learning import device as devices
from ...net import protocol, wire
from ...net.transport import Served, Transport
from ...outputs import atomic
from ...outputs.metrics import MetricsWriter
from . import checkpoints, finish, own_data, reports
from . import pacing as pacing_mod
from . import state as state_mod
from .evaluation import Evaluator
from ..exitcodes import describe
from .faults import FaultInjector, FaultPoint
from .keys import exposure_warning, load_keys
from ..observe.observers import Observers
from .stages import RoundStage, StageMachine
from .trainer import Trainer

log = logging.getLogger("p2pfed.run.peer")
Stage = RoundStage


class Peer:
    def __init__(self, cfg: config.Config, peer_id: int, run_dir: str | Path, resume: bool = False, log_ctx=None,
                 device: str | None = None, checkpoint_dir: str | Path | None = None, life: int = 1,
                 last_exit: int | None = None):
        """checkpoint_dir: where my checkpoint lives (default RUN_DIR/checkpoints). life: which
        start of this peer this is (a supervisor counts them: 2 is the first restart), and
        last_exit: how the previous life ended (its returncode)."""
        self.cfg = cfg
        self.id = peer_id
        self.ids = cfg.peer_ids
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else self.run_dir / "checkpoints"
        self.resume = resume
        self.life = life
        self.last_exit = last_exit
        self.log_ctx = log_ctx
        self.device_spec = device or cfg.train.device    # `p2pfed peer --device` (launch.py --gpus) wins
        self.metrics = MetricsWriter(self.run_dir / f"metrics-{peer_id}.jsonl", peer_id)
        # injected faults fire in a peer's first life only, so a restarted peer does not crash again
        self.faults = FaultInjector(() if resume else cfg.faults, peer_id, on_fire=self._fault_fired)
        self.stages = StageMachine(self._stage_entered)
        self.observers: Observers | None = None     # status file, TensorBoard, metrics port (setup)
        self.round = 1
        self.committed: Committed | None = None    # the last committed round state
        self.evaluated: Committed | None = None    # the last evaluated model (BatchNorm pooled if it could be)
        self.recipe = recipe.of(cfg)                # sent in every ready: the options my partners must share
        self._check_recipe()

    def _check_recipe(self) -> None:
        if len(self.recipe) > protocol.RECIPE_MAX_CHARS:
            longest = max(self.recipe.split(";"), key=len).partition("=")[0]
            raise config.ConfigError(f"the shared options of this config come to {len(self.recipe)} characters, "
                                     f"more than the {protocol.RECIPE_MAX_CHARS} a ready message carries; the "
                                     f"longest is {longest}: shorten it (e.g. shorter class names in data.classes)")

    # ------------------------------------------------------------------ stages, faults, logs
    def enter(self, stage: RoundStage) -> None:
        self.stages.enter(stage, self.round)

    def _stage_entered(self, stage: RoundStage, rnd: int) -> None:
        self.metrics.write("phase", round=rnd, phase=str(stage))
        if hasattr(self, "transport"):
            self.transport.set_status(phase=str(stage), round=rnd)

    def _fault_fired(self, f) -> None:
        self.metrics.write("fault", round=f.round, phase=f.phase, action=f.action)

    def _progress(self, progress: str) -> None:
        self.enter({Progress.WAITING: Stage.WAIT, Progress.TRAINING: Stage.TRAIN}.get(progress, Stage.EXCHANGE))

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        for d in (self.run_dir, self.checkpoint_dir):
            for f in atomic.sweep_stale(d):
                log.info("removed %s, left by a writer killed mid-write", f)
        # first, so that a metrics port in use fails the peer before it loads anything
        self.observers = Observers(cfg, self.id, self.run_dir, self.metrics, resume=self.resume)
        local = [p.id for p in cfg.peers if p.host == cfg.peer(self.id).host]
        torch.set_num_threads(cfg.train.threads or train.default_threads(len(local)))
        dev = devices.resolve(self.device_spec, local.index(self.id))
        self.data_dir = own_data.check(cfg, self.id)
        self.train_split, _, n_total = datasets.peer_partition(cfg.data, self.ids.index(self.id), len(self.ids),
                                                               cfg.model.input_size, self.data_dir)
        own_data.check_classes(cfg, self.train_split.classes)
        self.n_samples = len(self.train_split)
        self.weight = self.n_samples    # my weight in the round's mean
        self.plan = schedule.make_plan(cfg.train, self.n_samples, n_total / len(self.ids))
        self.trainer = Trainer(cfg, self.id, len(self.ids), self.train_split, self.plan, self.metrics, self.faults, dev)
        self.pacing = pacing_mod.Pacing(cfg.train, self.plan)
        template = self.trainer.template
        if cfg.model.weights_file or cfg.model.pretrained:     # every partner must start from the same weights
            start = state_digest(roundstate.model_part(template))
            self.recipe = recipe.with_start(self.recipe, start)
            self._check_recipe()
            log.info("starting from the weights of %s (digest %s)", cfg.model.weights_file or "ImageNet", start[:16])
        log.info("starting on %s: %d training images (%s partition%s); %d rounds of %s local steps (%.2f epochs); "
                 "model %.2f MB", dev, self.n_samples, cfg.data.partition,
                 ", decoded while training" if self.train_split.stream else "", self.plan.rounds,
                 sorted(set(self.plan.steps)), self.plan.total_steps / self.plan.steps_per_epoch,
                 roundstate.nbytes(roundstate.model_part(template)) / 1e6)
        self.metrics.write("plan", round=0, rounds=self.plan.rounds, epochs=round(self.plan.total_steps /
                           self.plan.steps_per_epoch, 3), steps_per_epoch=self.plan.steps_per_epoch,
                           total_steps=self.plan.total_steps, n_samples=self.n_samples,
                           class_counts=np.bincount(self.train_split.labels,
                                                    minlength=len(self.train_split.classes)).tolist(),
                           classes=list(self.train_split.classes))
        warning = exposure_warning(cfg)
        if warning:
            log.warning("%s", warning)
        a = cfg.averaging
        self.transport = Transport(cfg.peer(self.id), cfg.peers,
                                   max_message_bytes=protocol.max_message_bytes(roundstate.nbytes(template)),
                                   heartbeat_interval_s=a.heartbeat_interval_s, curve=load_keys(cfg, self.id))
        self.transport.start()
        self.observers.board.attach(self.transport)
        n_floats = sum(v.size for v in roundstate.exchanged(template).values() if np.issubdtype(v.dtype, np.floating))
        peer_ids = set(self.ids)
        self.mailbox = Mailbox(self.transport, a.dead_after_s, recipe_text=self.recipe,
                               validate=lambda msg: wire.check_schema(msg, template, n_floats, peer_ids))
        self.mailbox.last_round = self.plan.rounds
        self.mailbox.on_report = self.observers.board.report
        # secure aggregation: a mask key for this process (sent in every ready), and the fault points of its barrier
        self.secure = None
        if cfg.security.secure_aggregation:
            # the seal outlives this process: a restart in the same round must not take part in a sum over fewer
            self.secure = Secure(persist=lambda rnd: checkpoints.save_seal(
                self.checkpoint_dir, self.id, rnd), degree=cfg.security.mask_degree)
            if self.resume:
                self.secure.sealed_round = checkpoints.load_seal(self.checkpoint_dir, self.id)
            self.secure.watch(self.mailbox)
        self.evaluator = Evaluator(cfg, self.id, self.train_split, own_data.test_split(cfg, self.data_dir),
                                   self.transport, self.mailbox, self.secure,
                                   decoder=self.trainer.decoder or photos.Decoder(cfg.data.workers))
        self.allreduce = AllReduce(self.transport, self.mailbox, a, self.ids, faults=self.faults,
                                   on_progress=self._progress,
                                   codec=compress.CONFIG_CODECS[self.cfg.train.compression], secure=self.secure)
        if self.life > 1:
            why = f"after its last life {describe(self.last_exit)}" if self.last_exit is not None else ""
            log.warning("restarted by its supervisor (life %d) %s", self.life, why)
            self.metrics.write("event", round=self.round, message=f"restarted by its supervisor (life {self.life}) {why}")
        if self.resume:
            got = checkpoints.load(checkpoints.path_of(self.checkpoint_dir, self.id), self.trainer)
            if got:
                self._pace(got)
                self._serve(got)
                self._advance(got.round + 1)
                self.metrics.write("event", round=self.round, message=f"restarted from checkpoint of round {got.round}")

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        ended = "failed"
        try:
            code = self._run()
            ended = "finished" if code == 0 else "failed"
            return code
        finally:
            if self.observers:
                self.observers.close(ended)

    def _run(self) -> int:
        self.setup()
        try:
            presence.wait_for_peers(self.mailbox, self.cfg, self.id, resumed=self.resume)
            while self.round <= self.plan.rounds:
                claim = presence.claimed_ahead(self.mailbox, self.ids, self.round)
                if claim and self.sync(claim):
                    self._advance(self.committed.round + 1)
                else:
                    self.run_round()
            self.enter(Stage.DONE)
            finish.await_outputs(self, self.plan.rounds)
            return 0
        finally:
            try:
                self.transport.broadcast(self.ids, wire.encode("bye", self.id, round=self.round))
            finally:
                self.transport.close(flush_s=protocol.BYE_FLUSH_S)
                rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # ru_maxrss is in KiB
                self.metrics.write("exit", round=self.round, peak_rss_mb=round(rss_mb, 1))
                self.metrics.close()

    def run_round(self) -> None:
        rnd = self.round
        self.trainer.carried.update(self.pacing.entries())       # train.auto_steps: my measured costs
        if self.cfg.train.batchnorm == "sync":
            outcome, losses, train_s = self.train_synced(rnd)
        else:
            self.enter(Stage.TRAIN)
            started = time.monotonic()
            members = sorted({*(self.committed.members if self.committed else self.ids), self.id})  # expected
            losses = self.trainer.train_round(rnd, **reports.balance(self.cfg.train, self.mailbox, members, rnd))
            train_s = time.monotonic() - started
            if self.cfg.train.round_target == "samples":     # weighted by the images I processed
                self.weight = self.trainer.last_images
            outcome = self.settle(rnd, self._sent(rnd))
        self.pacing.measured(rnd, train_s, len(losses), outcome.sync_s if isinstance(outcome, Averaged) else None)
        committed = self.committed
        if self.id in committed.members and committed.round == rnd:
            stats = reports.round_stats(committed, outcome, losses, train_s, self.n_samples, self.plan,
                                        self.trainer.last_images)
            evaluates = self.plan.evaluates(rnd, self.cfg.train.eval_every)
            if evaluates:
                self.enter(Stage.EVAL)
                self.evaluated, ev_stats = self.evaluator.run(self.trainer.net, committed,
                                                              pool=not self.trainer.bn_frozen)
                stats.update(ev_stats)
                log.info("round %d (epoch %.2f): consensus of %s evaluated, accuracy on my test slice %.2f%%", rnd,
                         self.plan.epoch_after(rnd), list(committed.members),
                         100 * stats["correct"] / max(1, stats["total"]))
            if isinstance(outcome, Averaged):
                checkpoints.save_if_due(self, rnd, evaluates)
            stats.update(own_data.unreadable_stats(self), life=self.life)
            reports.publish(self, rnd, stats)
        self.faults.at(rnd, FaultPoint.BETWEEN_ROUNDS)
        self._advance(committed.round + 1)

    def train_synced(self, rnd: int) -> tuple:
        """Synchronized BatchNorm: the round's group forms first, then its members train together
        (every BatchNorm layer sums its statistics over them in each step, stepsync.py), then they
        average. An attempt that fails mid-step is trained again from the round's start."""
        self.trainer.begin_round(rnd)
        done: dict = {"losses": [], "train_s": 0.0, "attempts": 0}

        def work(group, scope) -> dict:
            share = group.weights[group.members.index(self.id)] / sum(group.weights)
            started = time.monotonic()
            # secure aggregation: a redo trains on fresh batches, so no sum of it repeats an input already summed
            fresh = bool(self.secure) and done["attempts"] > 0
            done["attempts"] += 1
            done["losses"] = self.trainer.train_synced(
                rnd, share, StepSync(self.transport, self.mailbox, scope, self.cfg.averaging.exchange_timeout_s,
                                     self.secure), fresh=fresh)
            done["train_s"] = time.monotonic() - started
            return self._sent(rnd)

        return self.settle(rnd, None, work), done["losses"], done["train_s"]

    def _sent(self, rnd: int) -> dict:
        """My round state as I send it (dumped for tests)."""
        state = self.trainer.state()
        if self.cfg.output.dump_round_models:
            reports.dump(self.run_dir, self.id, rnd, state, self.weight, "pre")
        return state

    def settle(self, rnd: int, state: dict | None, work=None) -> Averaged | Download:
        """Average the round, or download its consensus instead. A heartbeat claim that no peer
        backs with a model is distrusted, and the round averaged after all."""
        last = self.committed if self.committed and self.committed.round == rnd - 1 else None
        previous = list(last.members) if last else None
        anchor = (last.digest, last.state) if last else None        # what compressed shards are deltas from
        while True:
            outcome = self.allreduce.run(rnd, state, self.weight, previous,
                                         post=state_mod.outer_post(self.cfg.train, self.committed, self.trainer.template),
                                         work=work, anchor=anchor)
            if isinstance(outcome, Failed):
                raise RoundError(outcome.reason)
            if isinstance(outcome, Averaged):
                self.commit(outcome.committed)
                return outcome
            if self.sync(outcome):
                return outcome

    def sync(self, want: Download) -> bool:
        """Download and adopt a consensus. False if a claimant's claim proved false (then it is
        distrusted); a download that fails otherwise stops the peer."""
        self.enter(Stage.SYNC)
        got = download(self.transport, self.mailbox, self.trainer.template, self.ids, want.round,
                       self.cfg.averaging.fetch_timeout_s, want.digest)
        if isinstance(got, Failed):
            if got.alone:        # every other peer has left: nobody to distrust, nothing to restart for
                raise presence.NoPeers(f"round {self.round}: {got.reason}")
            if want.claimant is None:
                raise RoundError(f"round {self.round}: {got.reason}")
            log.warning("peer %d claimed to have committed round >= %d, but no peer sent such a model within "
                        "fetch_timeout_s=%s; ignoring its claims from now on", want.claimant, want.round,
                        self.cfg.averaging.fetch_timeout_s)
            self.mailbox.distrust(want.claimant)
            return False
        self._pace(got)
        self.trainer.global_step = self.plan.start_step(got.round + 1)
        self.commit(got)
        checkpoints.save(checkpoints.path_of(self.checkpoint_dir, self.id), self.trainer, got, self.cfg.model)
        self.metrics.write("checkpoint", round=got.round)
        log.info("adopted the consensus of round %d (digest %s, members %s): %s", got.round, got.digest[:12],
                 list(got.members), want.reason)
        self.metrics.write("event", round=got.round, message=f"synced round {got.round} consensus ({want.reason})")
        return True

    def commit(self, committed: Committed) -> None:
        """Train on from this committed round state, and serve it to late and rejoining peers."""
        self._pace(committed)
        self.trainer.load(committed.state)
        if self.cfg.output.dump_round_models:
            reports.dump(self.run_dir, self.id, committed.round, committed.state, self.n_samples, "post")
        self._serve(committed)

    # ------------------------------------------------------------------ helpers
    def _pace(self, committed: Committed) -> None:
        """train.auto_steps: once the members' choice is agreed, the rest of my run follows it."""
        pacing_mod.follow(self, committed)

    def _advance(self, rnd: int) -> None:
        """The one place the round number moves."""
        self.round = rnd
        if self.log_ctx:
            self.log_ctx.round = rnd
        self.mailbox.advance(rnd)

    def _serve(self, committed: Committed) -> None:
        """Hand the network thread a `model` and a `commit` notice for this committed round."""
        self.committed = committed
        c = committed
        self.transport.serve(Served(c.round, wire.encode("model", self.id, list(c.state.values()), round=c.round,
                                                         digest=c.digest, names=list(c.state.keys()),
                                                         members=list(c.members)),
                                    wire.encode("commit", self.id, round=c.round, digest=c.digest,
                                                members=list(c.members)), self.recipe))
        self.transport.set_status(committed=c.round)
