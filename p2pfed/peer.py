"""One peer process: train -> ready -> average -> commit -> eval, once per round.

The peer owns its model, its partition and its files; all networking goes through
Transport (sockets) and AllReduce (the round protocol). State per round:

    sync      if live peers committed a round I have not, download their consensus
    train     local epochs on my partition (the network thread keeps heartbeating)
    wait      ready; waiting for the leader's group
    exchange  butterfly all-reduce + digest agreement (allreduce.py)
    commit    load the average, checkpoint atomically, serve it to rejoining peers
    eval      evaluate the consensus on my slice of the test set; report to everyone

At the end the writer (output.writer, or the lowest live id) collects the reports and
writes consensus.pt and summary.json (and, if asked, the ONNX + INT8 models).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from . import allreduce, atomic, averaging, config, data, model, summary, wire
from .faults import FaultInjector
from .metrics import MetricsWriter
from .security import load_keys
from .transport import Transport

log = logging.getLogger("p2pfed.peer")

CONSENSUS_FORMAT = "p2pfed-consensus-1"
CHECKPOINT_FORMAT = "p2pfed-checkpoint-1"


def to_numpy(state_dict) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v.detach().cpu().contiguous().numpy()) for k, v in state_dict.items())


def to_torch(state: dict) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in state.items())


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
        self.global_step = 0

    # ------------------------------------------------------------------ setup
    def _fault_fired(self, f) -> None:
        self.metrics.write("fault", round=f.round, phase=f.phase, action=f.action)

    def set_phase(self, phase: str) -> None:
        self.transport.set_status(phase=phase, round=self.round)
        self.metrics.write("phase", round=self.round, phase=phase)

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
        self.net = model.build(cfg.model, seed=cfg.data.seed)
        self.template = to_numpy(self.net.state_dict())
        model_bytes = sum(a.nbytes for a in self.template.values())
        index = self.ids.index(self.id)
        self.train_split, _ = data.peer_partition(cfg.data, index, len(self.ids))
        self.n_samples = len(self.train_split)
        self.test_split = data.load_split(cfg.data, "test")
        self._eval_cache: dict = {}
        self.opt = model.make_optimizer(self.net, cfg.train)
        self.steps = model.steps_per_round(self.n_samples, cfg.train)
        self.gen = torch.Generator().manual_seed(cfg.data.seed * 1000 + self.id)
        log.info("partition: %d training images (%s), %d steps per round, model %.2f MB",
                 self.n_samples, cfg.data.partition, self.steps, model_bytes / 1e6)
        self.transport = Transport(self.spec, cfg.peers, max_message_bytes=int(model_bytes * 1.25) + (1 << 20),
                                   heartbeat_interval_s=cfg.averaging.heartbeat_interval_s,
                                   dead_after_s=cfg.averaging.dead_after_s, curve=load_keys(cfg, self.id))
        self.transport.responder = self._respond
        self.transport.start()
        n_floats = averaging.flatten(self.template).size
        self.mailbox = allreduce.Mailbox(self.transport,
                                         validate=lambda msg: wire.check_schema(msg, self.template, n_floats))
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
            log.warning("--resume: no checkpoint at %s; starting from round 1", path)
            return
        ck = torch.load(path, map_location="cpu", weights_only=True)   # our own file, not network bytes
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise RuntimeError(f"{path} is not a p2pfed checkpoint; delete it or start without --resume")
        self.net.load_state_dict(ck["state_dict"])
        self.opt.load_state_dict(ck["optimizer"])
        self.global_step = ck["global_step"]
        state = to_numpy(self.net.state_dict())
        self.committed = {"round": ck["round"], "digest": ck["digest"], "members": ck["members"], "state": state}
        self._set_round(ck["round"] + 1)
        self._serve()
        log.info("resumed from %s: round %d committed (digest %s)", path, ck["round"], ck["digest"][:12])
        self.metrics.write("event", round=self.round, message=f"restarted from checkpoint of round {ck['round']}")

    # ------------------------------------------------------------------ network-thread helpers
    def _serve(self) -> None:
        """Hand the transport a `model` message and a `commit` notice for the last consensus."""
        c = self.committed
        names = list(c["state"].keys())
        model_frames = wire.encode("model", self.id, list(c["state"].values()), round=c["round"],
                                   digest=c["digest"], names=names, members=c["members"])
        commit_frames = wire.encode("commit", self.id, round=c["round"], digest=c["digest"], members=c["members"])
        self._served = (c["round"], commit_frames)
        self.transport.set_status(committed=c["round"])
        self.transport.serve(model_frames)

    def _respond(self, msg: wire.Message):
        """Runs in the network thread: tell peers still in a round I committed that it is done."""
        served = getattr(self, "_served", None)
        if served and msg.kind in ("ready", "group", "part") and msg["round"] <= served[0]:
            return served[1]
        return None

    # ------------------------------------------------------------------ rounds
    def wait_for_peers(self) -> None:
        deadline = time.monotonic() + self.cfg.averaging.startup_timeout_s
        others = [p for p in self.ids if p != self.id]
        self.set_phase("start")
        while time.monotonic() < deadline:
            missing = [p for p in others if not self.transport.alive(p)]
            if not missing:
                return
            time.sleep(0.1)
        if len(missing) == len(others):
            raise allreduce.RoundError(
                f"no other peer reachable within averaging.startup_timeout_s={self.cfg.averaging.startup_timeout_s}"
                f" (tried {', '.join(f'{p.id}@{p.host}:{p.port}' for p in self.cfg.peers if p.id != self.id)}); "
                f"start them, or check host/port in the config and the firewall")
        log.warning("peers %s not reachable after startup_timeout_s=%s; starting without them (they can join "
                    "later). Check their host/port in the config and that they are running",
                    missing, self.cfg.averaging.startup_timeout_s)

    def _behind(self) -> int:
        """The highest round a live peer has committed, if it is >= my current round, else 0."""
        best = 0
        for p in self.ids:
            info = self.transport.info.get(p)
            if p != self.id and info and self.transport.alive(p):
                best = max(best, int(info.get("committed", 0)))
        return best if best >= self.round else 0

    def fetch(self, min_round: int, expect_digest: str | None = None) -> None:
        """Download the latest consensus (round >= min_round) from a live peer; verify its digest."""
        self.set_phase("sync")
        deadline = time.monotonic() + self.cfg.averaging.fetch_timeout_s
        asked_at, tried, alone_since = 0.0, [], time.monotonic()
        while time.monotonic() < deadline:
            if any(self.mailbox.alive(p) for p in self.ids if p != self.id):
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > 2 * self.cfg.averaging.dead_after_s:
                raise allreduce.RoundError(
                    f"round {self.round}: the others went on without me and no peer is alive to download the "
                    f"consensus of round >= {min_round} from (the run may be over; see {self.run_dir}/summary.json)")
            for msg in list(self.mailbox.latest_any("model")):
                self.mailbox.discard(msg)
                if msg["round"] < min_round:
                    continue
                try:
                    state = wire.check_state(msg["names"], msg.arrays, self.template)
                except wire.WireError as e:
                    log.warning("model from peer %s rejected: %s", msg.sender, e)
                    continue
                dg = averaging.digest(state)
                if dg != msg["digest"] or (expect_digest and msg["round"] == min_round and dg != expect_digest):
                    log.warning("model from peer %s rejected: digest %s does not match the announced one",
                                msg.sender, dg[:12])
                    continue
                self._adopt(msg["round"], dg, [int(m) for m in msg["members"]], state, source=msg.sender)
                return
            if time.monotonic() - asked_at > 2.0:
                live = [p for p in self.ids if p != self.id and self.mailbox.alive(p)]
                live.sort(key=lambda p: -int(self.transport.info.get(p, {}).get("committed", 0)))
                if live:
                    target = next((p for p in live if p not in tried), live[0])
                    tried.append(target)
                    self.transport.send(target, wire.encode("fetch", self.id, round=min_round))
                    asked_at = time.monotonic()
            self.mailbox.pump(0.1)
        raise allreduce.RoundError(f"could not download the consensus of round >= {min_round} from any live peer "
                                   f"within fetch_timeout_s={self.cfg.averaging.fetch_timeout_s}")

    def _adopt(self, rnd: int, dg: str, members: list[int], state, source) -> None:
        self.net.load_state_dict(to_torch(state))
        self.committed = {"round": rnd, "digest": dg, "members": members, "state": state}
        self._checkpoint()
        self._serve()
        self.global_step = rnd * self.steps
        log.info("adopted the consensus of round %d from %s (digest %s)", rnd, source, dg[:12])
        self.metrics.write("event", round=rnd, message=f"synced round {rnd} consensus from {source}")
        self._set_round(rnd + 1)
        self.mailbox.advance(self.round)

    def _checkpoint(self) -> None:
        c = self.committed
        atomic.save_torch(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "round": c["round"], "digest": c["digest"], "members": c["members"],
            "state_dict": self.net.state_dict(), "optimizer": self.opt.state_dict(),
            "global_step": self.global_step, "model_args": model.model_args(self.cfg.model)})

    def train_round(self) -> list[float]:
        self.set_phase("train")
        total = self.cfg.train.rounds * self.steps
        fault_step = max(1, self.steps // 2)

        def on_step(i: int, loss: float) -> None:
            if i == fault_step:
                self.faults.at(self.round, "train")
            self.metrics.write("step", round=self.round, step=i, steps=self.steps, loss=round(loss, 5),
                               global_step=self.global_step + i)

        losses = model.train_steps(self.net, self.opt, self.train_split, self.cfg.train, self.cfg.model.input_size,
                                   self.steps, self.global_step, total, self.gen, on_step)
        self.global_step += len(losses)
        return losses

    def _eval_split(self, members: list[int]) -> data.Split:
        """My slice of the test set: the test set is cut into one part per member."""
        key = (tuple(members), self.id)
        if key not in self._eval_cache:
            parts = data.partition_iid(len(self.test_split), len(members), self.cfg.data.seed + 1)
            self._eval_cache = {key: self.test_split.subset(parts[members.index(self.id)])}
        return self._eval_cache[key]

    def _dump(self, rnd: int, state, when: str) -> None:
        """For tests: my model before/after averaging, to check the consensus against a float64 mean."""
        arrays = {f"t{i}": v for i, v in enumerate(state.values())}
        path = self.run_dir / "pre" / f"round{rnd}-peer{self.id}{'' if when == 'pre' else '-post'}.npz"
        path.parent.mkdir(exist_ok=True)
        atomic.write_atomic(path, lambda f: np.savez(f, n_samples=self.n_samples, **arrays))

    def run_round(self) -> None:
        rnd = self.round
        losses = self.train_round()
        state = to_numpy(self.net.state_dict())
        if self.cfg.output.dump_round_models:
            self._dump(rnd, state, "pre")
        self.set_phase("wait")
        try:
            res = self.allreduce.run(rnd, state, self.n_samples)
        except allreduce.Behind as ex:
            log.warning("round %d: %s while I was waiting; downloading it", rnd, ex)
            self.fetch(ex.round)
            return
        except allreduce.Excluded as ex:
            c = ex.commit
            cand = self.allreduce.candidates.get(c["digest"])
            if cand is not None and c["round"] == rnd:
                self._adopt(rnd, c["digest"], [int(m) for m in c["members"]], cand, source=f"peer {c.sender} (same result)")
            else:
                log.warning("round %d went on without me (%s); downloading the consensus", rnd, ex)
                self.fetch(c["round"], c["digest"])
            return
        self.net.load_state_dict(to_torch(res.state))
        if self.cfg.output.dump_round_models:
            self._dump(rnd, res.state, "post")
        self.committed = {"round": rnd, "digest": res.digest, "members": res.members, "state": res.state}
        self._checkpoint()
        self._serve()
        log.info("round %d committed: members %s, digest %s, %.3f s, %d bytes sent", rnd, res.members,
                 res.digest[:16], res.averaging_s, res.bytes_sent)
        self.set_phase("eval")
        ev = model.evaluate(self.net, self._eval_split(res.members), self.cfg.train.eval_batch_size,
                            self.cfg.model.input_size)
        stats = {"members": res.members, "weights": res.weights, "digest": res.digest, "attempt": res.attempt,
                 "averaging_s": round(res.averaging_s, 4), "wait_s": round(res.wait_s, 4), "bytes_sent": res.bytes_sent,
                 "train_loss": float(np.mean(losses)) if losses else float("nan"),
                 "n_samples": self.n_samples, "events": res.events, **ev}
        self.metrics.write("round", round=rnd, **stats)
        for e in res.events:
            self.metrics.write("event", round=rnd, message=e)
        self.transport.broadcast(self.ids, wire.encode("report", self.id, round=rnd, stats=stats))
        self.mailbox.box[("report", rnd, -1)][self.id] = wire.Message("report", self.id, {"round": rnd, "stats": stats})
        self.faults.at(rnd, "between-rounds")
        self._set_round(rnd + 1)

    def run(self) -> int:
        self.setup()
        try:
            self.wait_for_peers()
            while self.round <= self.cfg.train.rounds:
                self._set_round(self.round)
                ahead = self._behind()
                if ahead:
                    log.info("live peers have committed round %d; downloading it", ahead)
                    self.fetch(ahead)
                    continue
                self.run_round()
            self.finish()
            return 0
        finally:
            try:
                self.transport.broadcast(self.ids, wire.encode("bye", self.id, round=self.round))
            finally:
                self.transport.close(flush_s=1.0)
                self.metrics.close()

    # ------------------------------------------------------------------ end of run
    def _writer(self) -> int:
        want = self.cfg.output.writer
        if want >= 0 and self.mailbox.alive(want):
            return want
        final = self.committed["members"] if self.committed else self.ids
        live = [p for p in final if self.mailbox.alive(p)] or [self.id]
        return min(live)

    def finish(self) -> None:
        self.set_phase("done")
        deadline = time.monotonic() + self.cfg.averaging.fetch_timeout_s + self.cfg.averaging.dead_after_s
        while time.monotonic() < deadline:
            if self.mailbox.get("done", self.cfg.train.rounds):   # first: a writer that is done also says bye
                return
            if self._writer() == self.id:
                self.write_outputs()
                self.transport.broadcast(self.ids, wire.encode("done", self.id, round=self.cfg.train.rounds))
                return
            self.mailbox.pump(0.2)
        log.warning("writer never reported done within %.0f s; exiting", self.cfg.averaging.fetch_timeout_s)

    def _final_reports(self) -> dict[int, dict[int, dict]]:
        """Wait (bounded) for the last round's reports from its live members; return all reports."""
        last = self.committed["round"]
        deadline = time.monotonic() + 2 * self.cfg.averaging.dead_after_s
        while time.monotonic() < deadline:
            have = self.mailbox.get("report", last)
            missing = [m for m in self.committed["members"] if m not in have and self.mailbox.alive(m)]
            if not missing:
                break
            self.mailbox.pump(0.1)
        reports: dict[int, dict[int, dict]] = {}
        for (k, r, _), by in self.mailbox.box.items():
            if k == "report":
                reports.setdefault(r, {}).update({p: m["stats"] for p, m in by.items()})
        return reports

    def write_outputs(self) -> None:
        c = self.committed
        reports = self._final_reports()
        model_bytes = sum(a.nbytes for a in c["state"].values())
        path = self.run_dir / "consensus.pt"
        atomic.save_torch(path, {
            "format": CONSENSUS_FORMAT, "state_dict": to_torch(c["state"]),
            "model_args": model.model_args(self.cfg.model), "config": config.to_dict(self.cfg),
            "round": c["round"], "peers": c["members"], "digest": c["digest"], "written_by": self.id})
        summ = summary.build(self.cfg, reports, final_digest=c["digest"], final_round=c["round"],
                             model_bytes=model_bytes, run_dir=self.run_dir)
        summary.write(self.run_dir, summ)
        log.info("wrote %s and summary.json (final digest %s)", path, c["digest"][:16])
        if self.cfg.output.quantize:
            from . import quantize
            self.set_phase("quantize")
            quantize.run(self.run_dir, calibration=self.train_split, cfg=self.cfg)
