"""RUN_DIR/summary.json from the per-round reports the peers sent (untrusted: types are checked)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from . import atomic

log = logging.getLogger("p2pfed.summary")

_REPORT_TYPES = {"members": list, "digest": str, "averaging_s": (int, float), "bytes_sent": int,
                 "correct": int, "total": int, "loss_sum": (int, float), "attempt": int, "events": list,
                 "train_loss": (int, float), "n_samples": int}


def _valid(stats) -> bool:
    return isinstance(stats, dict) and all(isinstance(stats.get(k), t) for k, t in _REPORT_TYPES.items())


def build(cfg, reports: dict[int, dict[int, dict]], final_digest: str, final_round: int, model_bytes: int,
          run_dir: Path | None = None) -> dict:
    """reports: round -> peer -> stats. Returns the summary.json document."""
    rounds, prev = [], list(cfg.peer_ids)
    for r in sorted(reports):
        by = {p: s for p, s in reports[r].items() if _valid(s)}
        if len(by) != len(reports[r]):
            log.warning("round %d: ignored %d malformed reports", r, len(reports[r]) - len(by))
        if not by:
            continue
        members = sorted({int(m) for s in by.values() for m in s["members"]})
        correct = sum(s["correct"] for s in by.values())
        total = sum(s["total"] for s in by.values())
        digests = {str(p): s["digest"] for p, s in sorted(by.items())}
        rounds.append({
            "round": r,
            "members": members,
            "digests": digests,
            "digests_agree": len(set(digests.values())) == 1,
            "weights": {str(p): s["n_samples"] for p, s in sorted(by.items())},
            "accuracy": correct / total if total else None,
            "test_loss": sum(s["loss_sum"] for s in by.values()) / total if total else None,
            "eval_samples": total,
            "train_loss": {str(p): s["train_loss"] for p, s in sorted(by.items())},
            "averaging_s": max(s["averaging_s"] for s in by.values()),
            "bytes_sent": {str(p): s["bytes_sent"] for p, s in sorted(by.items())},
            "attempts": max(s["attempt"] for s in by.values()),
            "dropped": sorted(set(prev) - set(members)),
            "joined": sorted(set(members) - set(prev)),
            "events": sorted({e for s in by.values() for e in s["events"] if isinstance(e, str)}),
        })
        prev = members
    faults = [{"peer": f.peer, "round": f.round, "phase": f.phase, "action": f.action,
               "handled": _handled(f.peer, f.round, f.phase, rounds)} for f in cfg.faults]
    final_acc = rounds[-1]["accuracy"] if rounds else None
    return {
        "peers": list(cfg.peer_ids),
        "rounds": rounds,
        "faults": faults,
        "final": {"round": final_round, "digest": final_digest, "accuracy": final_acc, "model_bytes": model_bytes,
                  "members": rounds[-1]["members"] if rounds else []},
    }


def _handled(peer: int, rnd: int, phase: str, rounds: list[dict]) -> str:
    """How the rounds after a fault went: who completed them, and whether the peer came back."""
    first = rnd + 1 if phase == "between-rounds" else rnd    # a fault between rounds follows a commit
    for r in rounds:
        if r["round"] < first:
            continue
        if peer in r["dropped"]:
            how = f"round {r['round']} completed without peer {peer} by {sorted(r['digests'])} (attempt {r['attempts']})"
            return how + (f" after: {r['events'][0]}" if r["events"] else "")
        if peer in r["members"]:
            return f"peer {peer} was back in round {r['round']}"
    return "no later round recorded"


def write(run_dir: Path, summ: dict) -> Path:
    return atomic.write_text(Path(run_dir) / "summary.json", json.dumps(summ, indent=2) + "\n")
