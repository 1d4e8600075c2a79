"""One simulated peer's life: the real peer's round loop (run/node/peer.py) around the real consensus
code, with virtual training and numpy round states.

    start    presence.wait_for_peers (resumed after a restart: from the checkpoint on its disk)
    a round  presence.claimed_ahead -> download; else train (virtual time), then
             AllReduce.run until Averaged (commit), Download (download.download, digest-verified)
             or Failed (the peer stops, as a real one exits 1)
    the end  linger while live peers have not committed the last round (they may download from
             me), then `bye`

The loop is the peer's, not a copy of the consensus: the lines that are the peer's own (serve
a commit, keep a checkpoint, the seal) are small and mirror run/node/peer.py. Every commit and
adoption is handed to the checks (checks.py) as it happens.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

from ..consensus import averaging, presence
from ..consensus.allreduce import AllReduce, Progress
from ..consensus.digest import digest as state_digest
from ..consensus.download import download
from ..consensus.mailbox import Mailbox
from ..consensus.masked import Secure
from ..consensus.outcome import Averaged, Committed, Download, Failed
from ..consensus.secagg import MaskKey
from ..net import wire
from ..net.shared import Served
from . import model
from .process import Life

log = logging.getLogger("p2pfed.sim.peer")

STAGES = {Progress.WAITING: "wait", Progress.TRAINING: "train", Progress.EXCHANGING: "exchange"}


class Hook:
    """The fault hook of one life (consensus/faultpoints.py): the real code calls at(round,
    point) at `exchange`, `seed` and `reveal`; the loop here calls it at `train` and
    `between-rounds`. The plan decides: crash here, corrupt my copy (`dissent`: returns True),
    or nothing."""

    def __init__(self, sim, life: Life):
        self.sim, self.life = sim, life

    def at(self, rnd: int, point: str) -> bool:
        action = self.sim.plan_fires(self.life, rnd, str(point))
        if action == "kill":
            self.life.die(f"killed at {point} of round {rnd}")
        return action == "dissent"


def run_life(sim, life: Life) -> None:
    """The main thread of one simulated peer process."""
    me, acfg, spec = life.peer, sim.acfg, sim.specs[life.peer]
    disk = sim.disks[me]
    t = life.transport
    template = model.initial()
    n_floats = sum(v.size for v in template.values() if averaging.is_float(v))
    ids = sim.ids
    mb = Mailbox(t, acfg.dead_after_s, validate=lambda msg: wire.check_schema(msg, template, n_floats, set(ids)),
                 recipe_text=spec.recipe)
    mb.last_round = sim.rounds
    hook = Hook(sim, life)
    secure = None
    if sim.secure:
        secure = Secure(key=MaskKey(), background=False,     # masks computed ahead at once, not on a thread
                        degree=sim.opts.mask_degree)
        if sim.keep_seal:
            secure.sealed_round = disk.sealed_round
            secure.persist = lambda rnd: setattr(disk, "sealed_round", rnd)
        secure.watch(mb)

    def stage(name: str, rnd: int) -> None:
        life.stage, life.round = name, rnd
        t.set_status(phase=name, round=rnd)
        sim.entered(life, name, rnd)

    ar = AllReduce(t, mb, acfg, ids, faults=hook, on_progress=lambda p: stage(STAGES[p], life.round), secure=secure)
    state = SimpleNamespace(committed=None)

    def commit(c: Committed, how: str) -> None:
        sim.checks.committed(life, c, how)
        state.committed = disk.checkpoint = c
        t.serve(Served(c.round, wire.encode("model", me, list(c.state.values()), round=c.round, digest=c.digest,
                                            names=list(c.state.keys()), members=list(c.members)),
                       wire.encode("commit", me, round=c.round, digest=c.digest, members=list(c.members)),
                       spec.recipe))
        t.set_status(committed=c.round)

    def sync(want: Download, rnd: int) -> bool | None:
        stage("sync", rnd)
        got = download(t, mb, template, ids, want.round, acfg.fetch_timeout_s, want.digest)
        if isinstance(got, Failed):
            if got.alone or want.claimant is None:
                sim.checks.stopped(life, got.reason)
                return None
            mb.distrust(want.claimant)
            return False
        commit(got, "download")
        return True

    try:
        rnd = 1
        if life.number > 1 and disk.checkpoint is not None:
            commit(disk.checkpoint, "resume")
            rnd = disk.checkpoint.round + 1
        mb.advance(rnd)
        stage("start", rnd)
        try:
            presence.wait_for_peers(mb, sim.presence_cfg, me, resumed=life.number > 1)
        except presence.NoPeers as e:
            sim.checks.stopped(life, str(e))
            return
        while rnd <= sim.rounds:
            mb.advance(rnd)
            claim = presence.claimed_ahead(mb, ids, rnd)
            if claim:
                synced = sync(claim, rnd)
                if synced is None:
                    return
                if synced:
                    rnd = state.committed.round + 1
                    continue
            stage("train", rnd)
            train_s = sim.train_time(me, rnd)
            life.sleep(train_s / 2)
            hook.at(rnd, "train")
            life.sleep(train_s / 2)
            c = state.committed
            base = c.state if c is not None else template
            mine = model.trained(sim.seed, me, rnd, base)
            sim.checks.trained(life, rnd, mine)
            last = c if c is not None and c.round == rnd - 1 else None
            previous = list(last.members) if last else None
            anchor = (last.digest, last.state) if last else None
            while True:
                outcome = ar.run(rnd, mine, spec.n_samples, previous, anchor=anchor)
                if isinstance(outcome, Failed):
                    sim.checks.stopped(life, outcome.reason)
                    return
                if isinstance(outcome, Averaged):
                    commit(outcome.committed, "averaged")
                    break
                synced = sync(outcome, rnd)
                if synced is None:
                    return
                if synced:
                    break
            hook.at(rnd, "between-rounds")
            rnd = state.committed.round + 1
        stage("done", sim.rounds)
        sim.checks.finished(life, state.committed)
        # stay to serve peers that are behind, while any live peer has not committed the last round
        until = sim.world.now + acfg.fetch_timeout_s + 2 * acfg.dead_after_s
        while sim.world.now < until:
            behind = [p for p in mb.live(ids) if p != me and mb.committed(p) < sim.rounds]
            if not behind:
                break
            mb.pump(min(1.0, until - sim.world.now))
    finally:
        if life.alive:
            t.broadcast(ids, wire.encode("bye", me, round=life.round))


def state_ok(c: Committed) -> bool:
    """Does this committed state hash to its digest?"""
    return state_digest(c.state) == c.digest
