"""The two model file formats, in one place: consensus.pt (the run's output) and a peer's
checkpoint. Both are torch.save'd dicts that describe themselves (format, model_args, round,
digest), written atomically, and read with weights_only=True: they are our own files, never
bytes from the network.

    consensus   format, state_dict, model_args, config, round, peers, digest, written_by
                (+ bn_pooled when BatchNorm statistics were pooled over all peers)
    checkpoint  format, state_dict, optimizer, round, digest, members, global_step, model_args,
                carried (the round state's scaffold.* and outer.* entries, {} when neither
                train.scaffold nor train.outer_momentum is on)
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import atomic

CONSENSUS_FORMAT = "p2pfed-consensus-1"
CHECKPOINT_FORMAT = "p2pfed-checkpoint-1"


class FormatError(RuntimeError):
    """A model file is missing, unreadable or of another format; the message names the file."""


def save_consensus(path: str | os.PathLike, *, state_dict, model_args: dict, config: dict, rnd: int,
                   peers: list[int], digest: str, written_by: int, **extra) -> Path:
    return atomic.save_torch(Path(path), {
        "format": CONSENSUS_FORMAT, "state_dict": state_dict, "model_args": model_args, "config": config,
        "round": rnd, "peers": list(peers), "digest": digest, "written_by": written_by, **extra})


def save_checkpoint(path: str | os.PathLike, *, state_dict, optimizer: dict, rnd: int, digest: str,
                    members: list[int], global_step: int, model_args: dict, carried: dict) -> Path:
    return atomic.save_torch(Path(path), {
        "format": CHECKPOINT_FORMAT, "state_dict": state_dict, "optimizer": optimizer, "round": rnd,
        "digest": digest, "members": list(members), "global_step": global_step, "model_args": model_args,
        "carried": carried})


def read(path: str | os.PathLike, fmt: str = CONSENSUS_FORMAT) -> dict:
    """Load a file of the given format; FormatError says what is wrong and what to do."""
    path = Path(path)
    kind = "consensus" if fmt == CONSENSUS_FORMAT else "checkpoint"
    if not path.is_file():
        raise FormatError(f"{path} does not exist" + ("; run the peers first (it is written at the end of a run)"
                                                        if fmt == CONSENSUS_FORMAT else ""))
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FormatError(f"{path} is not a readable {kind} file ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        found = ck.get("format") if isinstance(ck, dict) else None
        raise FormatError(f"{path} is not a p2pfed {kind} file (format {found!r}, expected {fmt!r}); "
                          f"pass a file written by p2pfed")
    return ck
