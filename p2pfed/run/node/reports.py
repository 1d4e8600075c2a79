"""What a peer says about a round: the stats of its `report` (docs/protocol.md, "Reports"), and,
for tests (output.dump_round_models), its round state before and after averaging.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...consensus.outcome import Averaged, Committed
from ...learning import balance as balancing
from ...net import wire
from ...outputs import atomic

BALANCE_WINDOW = 3      # rounds of reports a member's speed is measured over (sample-target rounds)


def round_stats(committed: Committed, outcome, losses: list[float], train_s: float, n_samples: int, plan,
                images: int = 0) -> dict:
    """A round's report stats; outcome is the Averaged, or the Download that gave the consensus.
    images: how many images my local steps processed (with train_s, my training speed)."""
    a = outcome if isinstance(outcome, Averaged) else None
    return {"members": list(committed.members), "weights": list(a.weights) if a else [], "digest": committed.digest,
            "attempt": a.attempt if a else 0, "sync_s": round(a.sync_s, 4) if a else 0.0,
            "averaging_s": round(a.averaging_s, 4) if a else 0.0, "wait_s": round(a.wait_s, 4) if a else 0.0,
            "train_s": round(train_s, 3), "bytes_sent": a.bytes_sent if a else 0,
            "train_loss": float(np.mean(losses)) if losses else float("nan"), "n_samples": n_samples,
            "images": int(images), "epoch": round(plan.epoch_after(committed.round), 4),
            "events": list(a.events) if a else [f"downloaded: {outcome.reason}"]}


def balance(tcfg, mailbox, members: list[int], rnd: int) -> dict:
    """train_round's batch_size and deadline_s for round rnd of a sample-target run
    (train.round_target = "samples"), else nothing. Speeds come from the reports (images and
    train_s) of the last BALANCE_WINDOW rounds, up to rnd - 2, in which every expected member
    reported (mine included): a round of lag, so that every member computes the same shares from
    the same reports; without such rounds (the first rounds) the shares are equal."""
    if tcfg.round_target != "samples":
        return {}
    complete = []
    for r, by_sender in sorted(mailbox.by_round("report").items(), reverse=True):
        if r <= rnd - 2 and all(m in by_sender for m in members):
            complete.append(by_sender)
            if len(complete) == BALANCE_WINDOW:
                break
    rates: dict[int, float | None] = {}
    for m in members:
        images = train_s = 0.0
        for by_sender in complete:
            stats = by_sender[m]["stats"] if isinstance(by_sender[m]["stats"], dict) else {}
            if type(stats.get("images")) is int and isinstance(stats.get("train_s"), (int, float)):
                images, train_s = images + stats["images"], train_s + float(stats["train_s"])
        rates[m] = balancing.rate(int(images), train_s)
    share = balancing.shares(rates, members, tcfg.batch_size)
    return {"batch_size": share[mailbox.me], "deadline_s": tcfg.round_deadline_s}


def publish(peer, rnd: int, stats: dict) -> None:
    """My round's stats: into my metrics, to every peer (`report`), and into my own mailbox."""
    peer.metrics.write("round", round=rnd, **stats)
    for e in stats["events"]:
        peer.metrics.write("event", round=rnd, message=e)
    peer.transport.broadcast(peer.ids, wire.encode("report", peer.id, round=rnd, stats=stats))
    peer.mailbox.put(wire.Message("report", peer.id, {"round": rnd, "stats": stats}))


def dump(run_dir: Path, peer_id: int, rnd: int, state: dict, n_samples: int, when: str) -> None:
    """For tests: my round state before ("pre") or after ("post") averaging, to check the
    consensus against a float64 mean (tests/helpers.check_round_exact)."""
    arrays = {f"t{i}": v for i, v in enumerate(state.values())}
    path = Path(run_dir) / "pre" / f"round{rnd}-peer{peer_id}{'' if when == 'pre' else '-post'}.npz"
    path.parent.mkdir(exist_ok=True)
    atomic.write_atomic(path, lambda f: np.savez(f, n_samples=n_samples, **arrays))
