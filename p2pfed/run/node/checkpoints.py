"""A peer's own checkpoint: written at its cadence and when it adopts a download, read by
`--resume`. The file format is outputs/checkpoint.py's; this module knows what a peer puts in
it and checks what it gets back (the restored round state must have the digest the file names).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ...consensus import digest, roundstate
from ...consensus.outcome import Committed, RoundError
from ...learning import model
from ...outputs import atomic, checkpoint
from .state import capture_state
from .trainer import Trainer

log = logging.getLogger("p2pfed.run.checkpoints")


def path_of(checkpoint_dir: Path, peer_id: int) -> Path:
    """Peer peer_id's checkpoint in its checkpoint directory (RUN_DIR/checkpoints unless
    `p2pfed peer --checkpoint-dir` names a node-local one)."""
    return checkpoint_dir / f"peer-{peer_id}.pt"


def save_if_due(peer, rnd: int, evaluated: bool) -> None:
    """After round rnd: every output.checkpoint_every rounds, else after each evaluation, and
    after the last round."""
    every = peer.cfg.output.checkpoint_every
    if (every and rnd % every == 0) or (not every and evaluated) or rnd == peer.plan.rounds:
        save(path_of(peer.checkpoint_dir, peer.id), peer.trainer, peer.committed, peer.cfg.model)
        peer.metrics.write("checkpoint", round=rnd)


def save(path: Path, trainer: Trainer, committed: Committed, model_cfg) -> None:
    checkpoint.save_checkpoint(path, state_dict=trainer.net.state_dict(), optimizer=trainer.opt.state_dict(),
                               rnd=committed.round, digest=committed.digest, members=list(committed.members),
                               global_step=trainer.global_step, model_args=model.model_args(model_cfg),
                               carried={k: torch.from_numpy(np.array(v)) for k, v in trainer.carried.items()})


def load(path: Path, trainer: Trainer) -> Committed | None:
    """Restore the trainer from a checkpoint; the committed round it holds (None: no file)."""
    if not path.exists():
        log.warning("--resume: no checkpoint at %s; starting from round 1 (live peers will be downloaded from)", path)
        return None
    try:
        ck = checkpoint.read(path, checkpoint.CHECKPOINT_FORMAT)
    except checkpoint.FormatError as e:
        raise RoundError(f"--resume: {e}") from None
    trainer.net.load_state_dict(ck["state_dict"])
    trainer.opt.load_state_dict(ck["optimizer"])
    trainer.global_step = ck["global_step"]
    # "outer": the key's name in checkpoints written before SCAFFOLD existed
    carried = {k: v.numpy() for k, v in ck.get("carried", ck.get("outer", {})).items()}
    trainer.carried = carried
    if trainer.controls:
        trainer.controls.set_common(roundstate.split(carried).scaffold)
    # the committed round state: the model and optimizer as loaded, and the carried c (not my c_i)
    state = capture_state(trainer.net, trainer.opt, trainer.tcfg, carried, copy=True)
    if digest.digest(state) != ck["digest"]:
        raise RoundError(f"--resume: {path} does not hold the round state its digest names (written with other "
                         f"train.outer_momentum / train.average_optimizer_state / train.scaffold settings?); restore "
                         f"the config it was written with, or delete it to rejoin by downloading the consensus")
    log.info("resumed from %s: round %d committed (digest %s)", path, ck["round"], ck["digest"][:12])
    return Committed(ck["round"], ck["digest"], tuple(ck["members"]), state)


def seal_path(checkpoint_dir: Path, peer_id: int) -> Path:
    """Where peer peer_id keeps the round it is sealed in (secure aggregation, consensus/masked.py)."""
    return checkpoint_dir / f"peer-{peer_id}.seal.json"


def save_seal(checkpoint_dir: Path, peer_id: int, rnd: int) -> None:
    """Written atomically when the peer could first unmask a sum of round rnd, so that a restarted
    process of it stays sealed in that round (docs/security.md, "Dropouts")."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(seal_path(checkpoint_dir, peer_id), json.dumps({"round": int(rnd)}) + "\n")


def load_seal(checkpoint_dir: Path, peer_id: int) -> int:
    """The round a previous process of this peer was sealed in (0: none). An unreadable file is
    an error that names it: forgetting a seal could reveal a member's update."""
    path = seal_path(checkpoint_dir, peer_id)
    if not path.exists():
        return 0
    try:
        rnd = json.loads(path.read_text())["round"]
        if isinstance(rnd, int) and not isinstance(rnd, bool) and rnd >= 0:
            return rnd
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise RoundError(f"{path} is not a valid seal file ({{\"round\": N}}); it records the round in which this peer "
                     f"saw a sum under secure aggregation. Restore it, or delete it only if no round is in progress")
