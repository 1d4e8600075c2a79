"""What a peer says about a round: the stats of its `report` (docs/protocol.md, "Reports"), and,
for tests (output.dump_round_models), its round state before and after averaging.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..consensus.outcome import Averaged, Committed
from ..outputs import atomic


def round_stats(committed: Committed, outcome, losses: list[float], train_s: float, n_samples: int, plan) -> dict:
    """A round's report stats; outcome is the Averaged, or the Download that gave the consensus."""
    a = outcome if isinstance(outcome, Averaged) else None
    return {"members": list(committed.members), "weights": list(a.weights) if a else [], "digest": committed.digest,
            "attempt": a.attempt if a else 0, "sync_s": round(a.sync_s, 4) if a else 0.0,
            "averaging_s": round(a.averaging_s, 4) if a else 0.0, "wait_s": round(a.wait_s, 4) if a else 0.0,
            "train_s": round(train_s, 3), "bytes_sent": a.bytes_sent if a else 0,
            "train_loss": float(np.mean(losses)) if losses else float("nan"), "n_samples": n_samples,
            "epoch": round(plan.epoch_after(committed.round), 4),
            "events": list(a.events) if a else [f"downloaded: {outcome.reason}"]}


def dump(run_dir: Path, peer_id: int, rnd: int, state: dict, n_samples: int, when: str) -> None:
    """For tests: my round state before ("pre") or after ("post") averaging, to check the
    consensus against a float64 mean (tests/helpers.check_round_exact)."""
    arrays = {f"t{i}": v for i, v in enumerate(state.values())}
    path = Path(run_dir) / "pre" / f"round{rnd}-peer{peer_id}{'' if when == 'pre' else '-post'}.npz"
    path.parent.mkdir(exist_ok=True)
    atomic.write_atomic(path, lambda f: np.savez(f, n_samples=n_samples, **arrays))
