"""The end of a run: elect the writer, and (if it is me) write consensus.pt and summary.json,
say `done`, then export and quantize. The election and the waits are the consensus layer's
(consensus/writer.py); the files are the outputs layer's.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ... import config
from ...consensus import roundstate, writer
from ...consensus.outcome import Committed
from ...learning import capture, model
from ...net import wire
from ...outputs import checkpoint, summary
from .stages import RoundStage

log = logging.getLogger("p2pfed.run.finish")


def await_outputs(peer, last_round: int) -> None:
    """Wait until a writer says done; write the outputs myself if I become the writer."""
    final = list(peer.committed.members) if peer.committed else peer.ids
    a = peer.cfg.averaging

    def is_writer() -> bool:
        return writer.elect(peer.mailbox, peer.cfg.output.writer, final, peer.id) == peer.id

    if not writer.await_done(peer.mailbox, last_round, is_writer, lambda: write_outputs(peer),
                             a.fetch_timeout_s + a.dead_after_s):
        log.warning("the writer never reported done within %.0f s; exiting", a.fetch_timeout_s + a.dead_after_s)


def write_outputs(peer) -> None:
    c: Committed = peer.committed
    reports = writer.collect_reports(peer.mailbox, c.round, list(c.members))
    ev = peer.evaluated if peer.evaluated and peer.evaluated.round == c.round else c.model()
    path = Path(peer.run_dir) / "consensus.pt"
    checkpoint.save_consensus(path, state_dict={k: v.clone() for k, v in capture.to_torch(ev.state).items()},
                              model_args=model.model_args(peer.cfg.model), config=config.to_dict(peer.cfg),
                              rnd=c.round, peers=list(c.members), digest=ev.digest, written_by=peer.id,
                              round_digest=c.digest, bn_pooled=ev.bn_pooled, classes=list(peer.train_split.classes))
    summ = summary.build(peer.cfg, reports, final_digest=ev.digest, final_round=c.round,
                         model_bytes=roundstate.nbytes(c.model().state), run_dir=peer.run_dir, round_digest=c.digest,
                         bn_pooled=ev.bn_pooled, exchanged_bytes=roundstate.nbytes(roundstate.exchanged(c.state)),
                         classes=list(peer.train_split.classes))
    summary.write(peer.run_dir, summ)
    acc = summ["final"]["accuracy"]
    log.info("wrote %s and summary.json: %d rounds, final accuracy %s, digest %s%s", path, c.round,
             "n/a" if acc is None else f"{100 * acc:.2f}%", ev.digest[:16],
             ", BatchNorm statistics pooled over all peers" if ev.bn_pooled else "")
    # the others may exit now: the slow INT8 work below needs nobody else
    peer.transport.broadcast(peer.ids, wire.encode("done", peer.id, round=peer.plan.rounds))
    if peer.cfg.output.quantize:
        from ...outputs import comparison
        peer.enter(RoundStage.QUANTIZE)
        comparison.run(peer.run_dir, calibration=peer.train_split, cfg=peer.cfg, writer=peer.id)
