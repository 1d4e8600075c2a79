"""TensorBoard event files for one peer, written from its metrics records (metrics.py).

Each peer writes RUN_DIR/tb/peer-K/, so `tensorboard --logdir RUN_DIR/tb` shows the peers side by
side. The x axis of every scalar is the peer's optimiser step count (steps done so far; the
same on every peer of a round, since the rounds fix each peer's local steps). Tags:

    train/loss             each step      the step's training loss (my batch)
    train/lr               each step      the learning rate of the step
    train/step_s           each step      seconds the step took, data loading included
    round/train_s          each round     seconds of local training in the round
    round/wait_s           each round     seconds waiting for the round's group
    round/exchange_s       each round     seconds of the exchange and digest agreement
    round/bytes_sent       each round     bytes I sent to average the round
    round/attempts         each round     attempts the round took (1 = no member failed)
    round/members          each round     members of the committed round
    eval/consensus_accuracy each evaluation  the consensus model's accuracy on the whole test set
                                            (every member's test slice), in [0, 1]
    eval/test_loss         each evaluation  its mean test loss

The consensus accuracy is written once every member of an evaluated round has reported its slice
(record "consensus"), so it is the same number in every peer's files.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("p2pfed.outputs.tensorboard")

TAGS = ("train/loss", "train/lr", "train/step_s", "round/train_s", "round/wait_s", "round/exchange_s",
        "round/bytes_sent", "round/attempts", "round/members", "eval/consensus_accuracy", "eval/test_loss")
FLUSH_S = 10       # the event writer flushes at least this often
QUEUE = 1000       # events queued for its writer thread before add_scalar waits for the disk


def available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardSink:
    """A metrics sink (MetricsWriter.add_sink) that writes the TAGS under log_dir."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter
        self.log_dir = Path(log_dir)
        self._w = SummaryWriter(log_dir=str(self.log_dir), flush_secs=FLUSH_S, max_queue=QUEUE)
        self._steps = 0                     # optimiser steps done, the x axis
        self._at_round: dict[int, int] = {}  # round -> steps done when it was committed

    def __call__(self, rec: dict) -> None:
        kind = rec.get("type")
        if kind == "step":
            self._steps = int(rec["global_step"]) + 1
            self._scalar("train/loss", rec.get("loss"))
            self._scalar("train/lr", rec.get("lr"))
            self._scalar("train/step_s", rec.get("step_s"))
        elif kind == "round":
            self._at_round[int(rec["round"])] = self._steps
            self._scalar("round/train_s", rec.get("train_s"))
            self._scalar("round/wait_s", rec.get("wait_s"))
            self._scalar("round/exchange_s", rec.get("averaging_s"))
            self._scalar("round/bytes_sent", rec.get("bytes_sent"))
            self._scalar("round/attempts", 1 + rec.get("attempt", 0))
            self._scalar("round/members", len(rec.get("members", ())))
        elif kind == "consensus":
            step = self._at_round.get(int(rec["round"]), self._steps)
            self._scalar("eval/consensus_accuracy", rec.get("accuracy"), step)
            self._scalar("eval/test_loss", rec.get("test_loss"), step)
        elif kind == "exit":
            self._w.flush()

    def _scalar(self, tag: str, value, step: int | None = None) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._w.add_scalar(tag, float(value), self._steps if step is None else step)

    def close(self) -> None:
        self._w.close()


def open_sink(run_dir: str | Path, peer: int, enabled: bool) -> TensorBoardSink | None:
    """The peer's sink, or None (output.tensorboard = false, or the package is not installed:
    then one log line says how to get it)."""
    if not enabled:
        return None
    if not available():
        log.info("no TensorBoard event files: the tensorboard package is not installed (pip install tensorboard; "
                 "or set output.tensorboard = false to silence this)")
        return None
    try:
        return TensorBoardSink(Path(run_dir) / "tb" / f"peer-{peer}")
    except Exception as e:         # torch.utils.tensorboard's imports, or an unwritable dir: the run goes on
        log.warning("no TensorBoard event files: %s: %s (set output.tensorboard = false to silence this)",
                    type(e).__name__, e)
        return None
