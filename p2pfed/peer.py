"""One peer process: train k steps -> ready -> average -> commit, round after round; evaluate
and checkpoint at their own cadence.

The peer owns its model, its partition and its files. Networking goes through Transport
(sockets), Mailbox (messages, liveness), AllReduce (one round), download (the consensus
from a live peer) and writer (the end of the run). Phases are protocol.Phase:

    sync      if live peers committed a round I have not, download their consensus
    train     the round's local steps on my partition (the network thread keeps heartbeating)
    wait      ready; waiting for the group
    exchange  butterfly all-reduce + digest agreement (allreduce.py)
    eval      at the eval cadence: evaluate the consensus on my slice of the test set
    done      the writer writes consensus.pt, summary.json (and INT8 if asked)
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from . import allreduce, atomic, averaging, checkpoint, config, data, model, outer, protocol, recipe, roundstate, scaffold
from . import schedule, summary, wire
from . import writer as writer_mod
from .download import download
from .evaluation import Evaluator
from .faults import FaultInjector
from .mailbox import Mailbox
from .metrics import MetricsWriter
from .protocol import Phase
from .security import exposure_warning, load_keys
from .transport import Transport

log = logging.getLogger("p2pfed.peer")


class Peer:
    def __init__(self, cfg: config.Config, peer_id: int, run_dir: str | Path, resume: bool = False,
                 log_ctx=None):
        self.cfg = cfg
        self.id = peer_id
        self.spec = cfg.peer(peer_id)
        self.ids = cfg.peer_ids
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.log_ctx = log_ctx
        self.metrics = MetricsWriter(self.run_dir / f"metrics-{peer_id}.jsonl", peer_id)
        # injected faults fire in a peer's first life only, so a restarted peer does not crash again
        self.faults = FaultInjector(() if resume else cfg.faults, peer_id, on_fire=self._fault_fired)
        self.round = 1
        self.committed: dict | None = None   # {"round", "digest", "members", "state"} of the last consensus
        self.evaluated: dict | None = None   # {"round", "state", "digest", "bn_pooled"}: the last evaluated model
        self.global_step = 0
        self.dissents = 0                   # consecutive rounds in which a majority outvoted my digest
        self.recipe = recipe.of(cfg)        # sent in every ready: the options my partners must share
        if len(self.recipe) > recipe.MAX_LENGTH:
            raise config.ConfigError(f"the shared options of this config come to {len(self.recipe)} characters, "
                                     f"more than the {recipe.MAX_LENGTH} a ready message carries; shorten "
                                     f"train.local_steps")

    # ------------------------------------------------------------------ setup
    def _fault_fired(self, f) -> None:
        self.metrics.write("fault", round=f.round, phase=f.phase, action=f.action)

    def set_phase(self, phase: Phase) -> None:
        self.transport.set_status(phase=str(phase), round=self.round)
        self.metrics.write("phase", round=self.round, phase=str(phase))

    def _set_round(self, rnd: int) -> None:
        self.round = rnd
        if self.log_ctx:
            self.log_ctx.round = rnd

    def setup(self) -> None:
        cfg = self.cfg
        for d in (self.run_dir, self.run_dir / "checkpoints"):
            for f in atomic.sweep_stale(d):
                log.info("removed %s, left by a writer killed mid-write", f)
        local = sum(1 for p in cfg.peers if p.host == self.spec.host)
        torch.set_num_threads(cfg.train.threads or model.default_threads(local))
        self.net = model.channels_last(model.build(cfg.model, seed=cfg.data.seed))
        self.opt = model.make_optimizer(self.net, cfg.train)
        # the round state (roundstate.py): the model, and the optimizer buffers / control variates /
        # outer momentum if the config asks for them. A copy: it is also round 1's anchor for the
        # outer step
        self.template = roundstate.capture(self.net, self.opt, cfg.train, copy=True)
        self.carried: dict = {}          # scaffold.* (c) and outer.* entries of the last committed round
        self.controls = scaffold.Controls(self.net) if cfg.train.scaffold else None
        model_bytes = sum(a.nbytes for a in roundstate.model_part(self.template).values())
        state_bytes = sum(a.nbytes for a in self.template.values())    # what a `model` message carries
        self.train_split, _, n_total = data.peer_partition(cfg.data, self.ids.index(self.id), len(self.ids))
        self.n_samples = len(self.train_split)
        test_split = data.load_split(cfg.data, "test")
        self.plan = schedule.make_plan(cfg.train, self.n_samples, n_total / len(self.ids))
        self.batches = data.stream(self.train_split, cfg.train.batch_size,
                                   torch.Generator().manual_seed(cfg.data.seed * 1000 + self.id),
                                   cfg.train.augment, cfg.model.input_size)
        log.info("partition: %d training images (%s); %d rounds of %s local steps (%d steps = %.2f epochs); "
                 "model %.2f MB", self.n_samples, cfg.data.partition, self.plan.rounds,
                 sorted(set(self.plan.steps)), self.plan.total_steps,
                 self.plan.total_steps / self.plan.steps_per_epoch, model_bytes / 1e6)
        self.metrics.write("plan", round=0, rounds=self.plan.rounds, epochs=round(self.plan.total_steps /
                           self.plan.steps_per_epoch, 3), steps_per_epoch=self.plan.steps_per_epoch,
                           total_steps=self.plan.total_steps)
        warning = exposure_warning(cfg)
        if warning:
            log.warning("%s", warning)
        self.transport = Transport(self.spec, cfg.peers, max_message_bytes=protocol.max_message_bytes(state_bytes),
                                   heartbeat_interval_s=cfg.averaging.heartbeat_interval_s,
                                   dead_after_s=cfg.averaging.dead_after_s, curve=load_keys(cfg, self.id))
        self.transport.responder = self._respond
        self.transport.start()
        n_floats = averaging.flatten(roundstate.exchanged(self.template)).size
        peer_ids = set(self.ids)
        self.mailbox = Mailbox(self.transport,
                               validate=lambda msg: wire.check_schema(msg, self.template, n_floats, peer_ids),
                               recipe_text=self.recipe)
        self.mailbox.last_round = self.plan.rounds
        self.evaluator = Evaluator(cfg, self.id, self.train_split, test_split, self.transport, self.mailbox)
        self.allreduce = allreduce.AllReduce(self.transport, self.mailbox, cfg.averaging, self.ids,
                                             fault=lambda where: self.faults.at(self.round, where),
                                             on_phase=self.set_phase)
        if self.resume:
            self._load_checkpoint()

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / f"peer-{self.id}.pt"

    def _load_checkpoint(self) -> None:
        path = self.checkpoint_path
        if not path.exists():
            log.warning("--resume: no checkpoint at %s; starting from round 1 (live peers will be downloaded from)",
                        path)
            return
        try:
            ck = checkpoint.read(path, checkpoint.CHECKPOINT_FORMAT)
        except checkpoint.FormatError as e:
            raise allreduce.RoundError(f"--resume: {e}") from None
        self.net.load_state_dict(ck["state_dict"])
        self.opt.load_state_dict(ck["optimizer"])
        self.global_step = ck["global_step"]
        # "outer": the key's name in checkpoints written before SCAFFOLD existed
        self.carried = {k: v.numpy() for k, v in ck.get("carried", ck.get("outer", {})).items()}
        if self.controls:
            self.controls.set_common(roundstate.capture(self.net, self.opt, self.cfg.train, self.carried))
        state = roundstate.capture(self.net, self.opt, self.cfg.train, self.carried, copy=True)
        if averaging.digest(state) != ck["digest"]:
            raise allreduce.RoundError(
                f"--resume: {path} does not hold the round state its digest names (written with other "
                f"train.outer_momentum / train.average_optimizer_state / train.scaffold settings?); restore the config it was "
                f"written with, or delete it to rejoin by downloading the consensus")
        self.committed = {"round": ck["round"], "digest": ck["digest"], "members": ck["members"], "state": state}
        self._set_round(ck["round"] + 1)
        self._serve()
        log.info("resumed from %s: round %d committed (digest %s)", path, ck["round"], ck["digest"][:12])
        self.metrics.write("event", round=self.round, message=f"restarted from checkpoint of round {ck['round']}")

    # ------------------------------------------------------------------ network-thread helpers
    def _serve(self) -> None:
        """Hand the transport a `model` message and a `commit` notice for the last consensus."""
        c = self.committed
        model_frames = wire.encode("model", self.id, list(c["state"].values()), round=c["round"],
                                   digest=c["digest"], names=list(c["state"].keys()), members=c["members"])
        commit_frames = wire.encode("commit", self.id, round=c["round"], digest=c["digest"], members=c["members"])
        self._served = (c["round"], commit_frames)
        self.transport.set_status(committed=c["round"])
        self.transport.serve(model_frames)

    def _respond(self, msg: wire.Message):
        """Runs in the network thread: tell peers still in a round I committed that it is done
        (not a peer with other options: my rounds are not its rounds)."""
        served = getattr(self, "_served", None)
        if msg.kind == "ready" and msg["recipe"] != self.recipe:
            return None
        if served and msg.kind in ("ready", "group", "part") and msg["round"] <= served[0]:
            return served[1]
        return None

    # ------------------------------------------------------------------ rounds
    def wait_for_peers(self) -> None:
        deadline = time.monotonic() + self.cfg.averaging.startup_timeout_s
        others = [p for p in self.ids if p != self.id]
        self.set_phase(Phase.START)
        missing = others
        while time.monotonic() < deadline:
            missing = [p for p in others if not self.mailbox.alive(p)]
            if not missing:
                return
            self.mailbox.pump(0.1)
        if len(missing) == len(others):
            raise allreduce.RoundError(
                f"no other peer reachable within averaging.startup_timeout_s={self.cfg.averaging.startup_timeout_s}"
                f" (tried {', '.join(f'{p.id}@{p.host}:{p.port}' for p in self.cfg.peers if p.id != self.id)}); "
                f"start them, or check host/port in the config and the firewall")
        log.warning("peers %s not reachable after startup_timeout_s=%s; starting without them (they can join "
                    "later). Check their host/port in the config and that they are running",
                    missing, self.cfg.averaging.startup_timeout_s)

    def _behind(self) -> tuple[int, int]:
        """(round, peer): the highest round a live peer says it has committed, if it is >= my
        current round; else (0, -1)."""
        claims = [(self.mailbox.committed(p), p) for p in self.mailbox.live(self.ids) if p != self.id]
        best = max(claims, default=(0, -1))
        return best if best[0] >= self.round else (0, -1)

    def fetch(self, min_round: int, expect_digest: str | None = None, claimant: int | None = None) -> bool:
        """Download and adopt a consensus of round >= min_round. With a claimant (a peer whose
        heartbeat says it is ahead), a claim that no peer can back up within fetch_timeout_s is
        not fatal: the claimant is distrusted from then on and False is returned."""
        self.set_phase(Phase.SYNC)
        try:
            got = download(self.transport, self.mailbox, self.template, self.ids, min_round,
                           self.cfg.averaging.fetch_timeout_s, expect_digest, where=f"round {self.round}: ")
        except allreduce.RoundError:
            if claimant is None:
                raise
            log.warning("peer %d claimed to have committed round >= %d, but no peer sent such a model within "
                        "fetch_timeout_s=%s; ignoring its claims from now on", claimant, min_round,
                        self.cfg.averaging.fetch_timeout_s)
            self.mailbox.distrust(claimant)
            return False
        self._adopt(got.round, got.digest, got.members, got.state, source=f"peer {got.source}")
        return True

    def _load(self, state) -> None:
        """Train on from a round state: model, averaged optimizer buffers, the federation's control
        variate c, outer momentum."""
        self.carried = roundstate.restore(self.net, self.opt, self.cfg.train, state, self.global_step)
        if self.controls:
            self.controls.set_common(self.carried)

    def _adopt(self, rnd: int, dg: str, members: list[int], state, source: str) -> None:
        self.global_step = self.plan.start_step(rnd + 1)
        self._load(state)
        self.committed = {"round": rnd, "digest": dg, "members": members, "state": state}
        self._checkpoint()
        self._serve()
        log.info("adopted the consensus of round %d from %s (digest %s)", rnd, source, dg[:12])
        self.metrics.write("event", round=rnd, message=f"synced round {rnd} consensus from {source}")
        self._set_round(rnd + 1)
        self.mailbox.advance(self.round)

    def _checkpoint(self) -> None:
        c = self.committed
        checkpoint.save_checkpoint(self.checkpoint_path, state_dict=self.net.state_dict(),
                                   optimizer=self.opt.state_dict(), rnd=c["round"], digest=c["digest"],
                                   members=c["members"], global_step=self.global_step,
                                   model_args=model.model_args(self.cfg.model),
                                   carried={k: torch.from_numpy(np.array(v)) for k, v in self.carried.items()})
        self.metrics.write("checkpoint", round=c["round"])

    def train_round(self) -> list[float]:
        self.set_phase(Phase.TRAIN)
        steps = self.plan.steps[self.round - 1]
        fault_step = max(1, steps // 2)
        epoch0 = self.global_step / self.plan.steps_per_epoch

        def on_step(i: int, loss: float) -> None:
            if i == fault_step:
                self.faults.at(self.round, "train")
            self.metrics.write("step", round=self.round, step=i, steps=steps, loss=round(loss, 5),
                               global_step=self.global_step + i,
                               epoch=round(epoch0 + i / self.plan.steps_per_epoch, 4))

        losses = model.train_steps(self.net, self.opt, self.batches, self.cfg.train, steps, self.global_step,
                                   self.plan.total_steps, self.cfg.train.batch_size * len(self.ids), on_step,
                                   grad_hook=self.controls.round_hook() if self.controls else None)
        if self.controls:
            self.controls.finish_round()
        self.global_step += len(losses)
        return losses

    def _dump(self, rnd: int, state, when: str) -> None:
        """For tests: my model before/after averaging, to check the consensus against a float64 mean."""
        arrays = {f"t{i}": v for i, v in enumerate(state.values())}
        path = self.run_dir / "pre" / f"round{rnd}-peer{self.id}{'' if when == 'pre' else '-post'}.npz"
        path.parent.mkdir(exist_ok=True)
        atomic.write_atomic(path, lambda f: np.savez(f, n_samples=self.n_samples, **arrays))

    def _outer_step(self):
        """The outer step as a function of the round's mean (None when train.outer_momentum = 0).
        Its anchor is the last committed round state, the same on every member (the digest checks
        it). Before any commit there is no agreed anchor, so the first result is the mean itself
        with zero momentum: the peers' initial models need not be bit-identical."""
        t = self.cfg.train
        if not t.outer_momentum:
            return None
        if self.committed is None:
            return lambda mean: outer.start(mean, self.template)
        previous = self.committed["state"]
        params = roundstate.param_names(self.net)
        return lambda mean: outer.apply(mean, previous, params, t.outer_lr, t.outer_momentum)

    def _average(self, rnd: int, state) -> allreduce.RoundResult | None:
        """The round's all-reduce; None if I downloaded the consensus instead."""
        previous = self.committed["members"] if self.committed and self.committed["round"] == rnd - 1 else None
        try:
            result = self.allreduce.run(rnd, state, self.n_samples, previous, post=self._outer_step())
            self.dissents = 0
            return result
        except allreduce.Behind as ex:
            log.warning("round %d: %s while I was waiting; downloading it", rnd, ex)
            if not self.fetch(rnd, claimant=ex.peer):
                return self._average(rnd, state)     # the claim was false: average this round after all
        except allreduce.Dissent as ex:
            self.dissents += 1
            if self.dissents >= protocol.MAX_CONSECUTIVE_DISSENT:
                raise allreduce.RoundError(
                    f"peer {self.id}: in {self.dissents} rounds in a row (the last {rnd}) my model's digest differed "
                    f"from the one a strict majority computed. This peer's computation differs from the others': "
                    f"check that it runs the same p2pfed version and config, and its hardware (memory); "
                    f"stopping") from None
            log.warning("%s; keeping nothing of this round, downloading the committed model (dissent %d of at "
                        "most %d in a row)", ex, self.dissents, protocol.MAX_CONSECUTIVE_DISSENT - 1)
            self.fetch(rnd, ex.digest)
            return None
        except allreduce.Excluded as ex:
            c = ex.commit
            cand = self.allreduce.candidates.get(c["digest"])
            if cand is not None and c["round"] == rnd:
                self._adopt(rnd, c["digest"], [int(m) for m in c["members"]], cand,
                            source=f"peer {c.sender} (same result)")
            else:
                log.warning("round %d went on without me (%s); downloading the consensus", rnd, ex)
                self.fetch(c["round"], c["digest"])
        return None

    def run_round(self) -> None:
        rnd = self.round
        train_started = time.monotonic()
        losses = self.train_round()
        train_s = time.monotonic() - train_started
        # what I send: my own control variate c_i in place of the committed c
        sent = {**self.carried, **self.controls.local} if self.controls else self.carried
        state = roundstate.capture(self.net, self.opt, self.cfg.train, sent)
        if self.cfg.output.dump_round_models:
            self._dump(rnd, state, "pre")
        self.set_phase(Phase.WAIT)
        res = self._average(rnd, state)
        if res is None:
            return
        self._load(res.state)
        if self.cfg.output.dump_round_models:
            self._dump(rnd, res.state, "post")
        self.committed = {"round": rnd, "digest": res.digest, "members": res.members, "state": res.state}
        self._serve()
        log.debug("round %d committed: members %s, digest %s, sync %.3f s (averaging %.3f s), %d bytes", rnd,
                  res.members, res.digest[:16], res.sync_s, res.averaging_s, res.bytes_sent)
        stats = {"members": res.members, "weights": res.weights, "digest": res.digest, "attempt": res.attempt,
                 "sync_s": round(res.sync_s, 4), "averaging_s": round(res.averaging_s, 4),
                 "wait_s": round(res.wait_s, 4), "train_s": round(train_s, 3), "bytes_sent": res.bytes_sent,
                 "train_loss": float(np.mean(losses)) if losses else float("nan"), "n_samples": self.n_samples,
                 "epoch": round(self.plan.epoch_after(rnd), 4), "events": res.events}
        evaluates = self.plan.evaluates(rnd, self.cfg.train.eval_every)
        if evaluates:
            self.set_phase(Phase.EVAL)
            self.evaluated, ev_stats = self.evaluator.run(self.net, rnd, res.state, res.digest, res.members)
            stats.update(ev_stats)
            log.info("round %d (epoch %.2f): members %s, digest %s, local accuracy %.2f%%", rnd,
                     self.plan.epoch_after(rnd), res.members, res.digest[:16],
                     100 * stats["correct"] / max(1, stats["total"]))
        every = self.cfg.output.checkpoint_every
        if (every and rnd % every == 0) or (not every and evaluates) or rnd == self.plan.rounds:
            self._checkpoint()
        self.metrics.write("round", round=rnd, **stats)
        for e in res.events:
            self.metrics.write("event", round=rnd, message=e)
        self.transport.broadcast(self.ids, wire.encode("report", self.id, round=rnd, stats=stats))
        self.mailbox.put(wire.Message("report", self.id, {"round": rnd, "stats": stats}))
        self.faults.at(rnd, "between-rounds")
        self._set_round(rnd + 1)

    def run(self) -> int:
        self.setup()
        try:
            self.wait_for_peers()
            while self.round <= self.plan.rounds:
                self._set_round(self.round)
                ahead, claimant = self._behind()
                if ahead:
                    log.info("peer %d says it has committed round %d; downloading the consensus", claimant, ahead)
                    self.fetch(self.round, claimant=claimant)
                    continue
                self.run_round()
            self.finish()
            return 0
        finally:
            try:
                self.transport.broadcast(self.ids, wire.encode("bye", self.id, round=self.round))
            finally:
                self.transport.close(flush_s=protocol.BYE_FLUSH_S)
                import resource
                rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # ru_maxrss is in KiB
                self.metrics.write("exit", round=self.round, peak_rss_mb=round(rss_mb, 1))
                self.metrics.close()

    # ------------------------------------------------------------------ end of run
    def finish(self) -> None:
        self.set_phase(Phase.DONE)
        last = self.plan.rounds
        final = self.committed["members"] if self.committed else self.ids

        def is_writer() -> bool:
            return writer_mod.elect(self.mailbox, self.cfg.output.writer, final, self.id) == self.id

        a = self.cfg.averaging
        if not writer_mod.await_done(self.mailbox, last, is_writer, self.write_outputs,
                                     a.fetch_timeout_s + a.dead_after_s):
            log.warning("the writer never reported done within %.0f s; exiting", a.fetch_timeout_s + a.dead_after_s)

    def write_outputs(self) -> None:
        c = self.committed
        reports = writer_mod.collect_reports(self.mailbox, c["round"], c["members"])
        plain, plain_digest = roundstate.model_of(c["state"], c["digest"])
        model_bytes = sum(a.nbytes for a in plain.values())
        path = self.run_dir / "consensus.pt"
        ev = self.evaluated if self.evaluated and self.evaluated["round"] == c["round"] else \
            {"state": plain, "digest": plain_digest, "bn_pooled": False}
        checkpoint.save_consensus(path, state_dict={k: v.clone() for k, v in roundstate.to_torch(ev["state"]).items()},
                                  model_args=model.model_args(self.cfg.model), config=config.to_dict(self.cfg),
                                  rnd=c["round"], peers=c["members"], digest=ev["digest"], written_by=self.id,
                                  round_digest=c["digest"], bn_pooled=ev["bn_pooled"])
        summ = summary.build(self.cfg, reports, final_digest=ev["digest"], final_round=c["round"],
                             model_bytes=model_bytes, run_dir=self.run_dir, round_digest=c["digest"],
                             bn_pooled=ev["bn_pooled"],
                             exchanged_bytes=sum(a.nbytes for a in roundstate.exchanged(c["state"]).values()))
        summary.write(self.run_dir, summ)
        log.info("wrote %s and summary.json (final digest %s%s)", path, ev["digest"][:16],
                 ", BatchNorm statistics pooled over all peers" if ev["bn_pooled"] else "")
        # the others may exit now: the slow INT8 work below needs nobody else
        self.transport.broadcast(self.ids, wire.encode("done", self.id, round=self.plan.rounds))
        if self.cfg.output.quantize:
            from . import quantize
            self.set_phase(Phase.QUANTIZE)
            quantize.run(self.run_dir, calibration=self.train_split, cfg=self.cfg)
