"""RUN_DIR/summary.json from the per-round reports the peers sent (checked on arrival by
consensus.writer.valid_reports)."""
from __future__ import annotations

import json
from pathlib import Path

from . import atomic

def build(cfg, reports: dict[int, dict[int, dict]], final_digest: str, final_round: int, model_bytes: int,
          run_dir: Path | None = None, round_digest: str = "", bn_pooled: bool = False,
          exchanged_bytes: int = 0, classes: list[str] | None = None) -> dict:
    """reports: round -> peer -> stats. Returns the summary.json document. exchanged_bytes: the
    part of the round state that is averaged (the model, plus optimizer buffers and control
    variates when configured); 0 = the model alone. classes: the class names in output order."""
    rounds, prev = [], list(cfg.peer_ids)
    for r in sorted(reports):
        if reports[r]:
            rounds.append(_round(r, reports[r], prev))
            prev = rounds[-1]["members"]
    faults = [{"peer": f.peer, "round": f.round, "phase": f.phase, "action": f.action,
               "handled": _slow(f, rounds) if f.action == "slow" else _handled(f.peer, f.round, f.phase, rounds)}
              for f in cfg.faults]
    final_acc = rounds[-1]["accuracy"] if rounds else None
    evaluations = [{"epoch": r["epoch"], "round": r["round"], "accuracy": r["accuracy"], "test_loss": r["test_loss"]}
                   for r in rounds if r["accuracy"] is not None]
    sync = [r["sync_s"] for r in rounds]
    classes = list(classes or cfg.data.classes)
    last_eval = next((r for r in sorted(reports, reverse=True)
                      if reports[r] and all("total" in st for st in reports[r].values())), None)
    ever = {m for r in rounds for m in r["members"]}
    return {
        "peers": list(cfg.peer_ids),
        "never_joined": [p for p in cfg.peer_ids if p not in ever],
        "restarts": restarts(reports),
        "classes": classes,
        "per_class": per_class(reports[last_eval], classes) if last_eval is not None else {},
        "sites": sites(reports[last_eval], classes) if last_eval is not None and cfg.data.partition == "own" else {},
        "unreadable": unreadable(reports),
        "evaluations": evaluations,
        "sync": {"rounds": len(rounds), "median_s": quantile(sync, 0.5) if sync else None,
                 "p90_s": quantile(sync, 0.9) if sync else None,
                 "all_agree": all(r["digests_agree"] for r in rounds)},
        "rounds": rounds,
        "faults": faults,
        "final": {"round": final_round, "digest": final_digest, "round_digest": round_digest or final_digest,
                  "bn_pooled": bn_pooled, "accuracy": final_acc, "model_bytes": model_bytes,
                  "exchanged_bytes": exchanged_bytes or model_bytes,
                  "members": rounds[-1]["members"] if rounds else []},
    }


def restarts(reports: dict[int, dict[int, dict]]) -> dict:
    """peer -> {"restarts": how many times its supervisor restarted it, "back_in": the first round
    it reported after each restart}, for the peers that were restarted (from the "life" of
    their reports: 1 is the first start)."""
    out: dict = {}
    for r in sorted(reports):
        for p, stats in reports[r].items():
            life = stats.get("life", 1)
            seen = out.setdefault(p, {"life": 1, "back_in": []})
            if life > seen["life"]:
                seen["life"] = life
                seen["back_in"].append(r)
    return {str(p): {"restarts": v["life"] - 1, "back_in": v["back_in"]} for p, v in sorted(out.items())
            if v["life"] > 1}


def _counts(stats: dict, key: str, k: int) -> list[int] | None:
    """A report's per-class counts (a list of k non-negative ints), or None (a report came from the network)."""
    v = stats.get(key)
    if isinstance(v, list) and len(v) == k and all(type(x) is int and 0 <= x < 2 ** 53 for x in v):
        return v
    return None


def per_class(by: dict[int, dict], classes: list[str]) -> dict:
    """class -> {correct, total, accuracy} over every member's evaluation of one round."""
    k = len(classes)
    correct, total = [0] * k, [0] * k
    for stats in by.values():
        c, t = _counts(stats, "class_correct", k), _counts(stats, "class_total", k)
        if c is None or t is None:
            continue
        correct = [a + b for a, b in zip(correct, c)]
        total = [a + b for a, b in zip(total, t)]
    return {name: {"correct": c, "total": t, "accuracy": round(c / t, 4) if t else None}
            for name, c, t in zip(classes, correct, total)}


def sites(by: dict[int, dict], classes: list[str]) -> dict:
    """peer -> how the final model serves that site (own data): its accuracy on its own test
    folder, per class, and the images it trained on per class; plus "pooled": all sites' test
    images together."""
    out: dict = {}
    for p, stats in sorted(by.items()):
        t = stats.get("total", 0)
        out[str(p)] = {"accuracy": round(stats["correct"] / t, 4) if t else None, "correct": stats.get("correct", 0),
                       "total": t, "train_images": stats.get("n_samples"),
                       "per_class": per_class({p: stats}, classes),
                       "unreadable": stats.get("unreadable", 0) if type(stats.get("unreadable", 0)) is int else 0}
    correct, total = sum(s["correct"] for s in out.values()), sum(s["total"] for s in out.values())
    out["pooled"] = {"accuracy": round(correct / total, 4) if total else None, "correct": correct, "total": total}
    return out


def unreadable(reports: dict[int, dict[int, dict]]) -> dict:
    """peer -> {count, files}: the unreadable images each peer skipped, from its latest report."""
    out = {}
    for r in sorted(reports):
        for p, stats in reports[r].items():
            n, files = stats.get("unreadable"), stats.get("unreadable_files")
            if type(n) is int and n > 0 and isinstance(files, list):
                out[str(p)] = {"count": n, "files": [f[:300] for f in files[:50] if isinstance(f, str)]}
    return dict(sorted(out.items()))


def _round(r: int, by: dict[int, dict], prev: list[int]) -> dict:
    """One line of summary.json: round r from its members' reports (peer -> stats)."""
    members = sorted({int(m) for s in by.values() for m in s["members"]})
    evaluated = all("total" in s for s in by.values())
    correct = sum(s["correct"] for s in by.values()) if evaluated else 0
    total = sum(s["total"] for s in by.values()) if evaluated else 0
    digests = {str(p): s["digest"] for p, s in sorted(by.items())}
    number = (int, float)
    return {
        "round": r,
        "epoch": max((s.get("epoch", 0) for s in by.values() if isinstance(s.get("epoch", 0), number)), default=0),
        "members": members,
        "digests": digests,
        "digests_agree": len(set(digests.values())) == 1,
        "weights": _weights(by),
        "accuracy": correct / total if total else None,
        "test_loss": sum(s["loss_sum"] for s in by.values()) / total if total else None,
        "eval_samples": total,
        "train_loss": {str(p): s["train_loss"] for p, s in sorted(by.items())},
        "averaging_s": max(s["averaging_s"] for s in by.values()),
        "sync_s": max((s.get("sync_s", 0) for s in by.values() if isinstance(s.get("sync_s", 0), number)), default=0),
        "bytes_sent": {str(p): s["bytes_sent"] for p, s in sorted(by.items())},
        "attempts": 1 + max(s["attempt"] for s in by.values()),     # attempts are numbered from 0
        "dropped": sorted(set(prev) - set(members)),
        "joined": sorted(set(members) - set(prev)),
        "events": sorted({e for s in by.values() for e in s["events"] if isinstance(e, str)}),
    }


def _weights(by: dict[int, dict]) -> dict[str, int]:
    """peer -> its weight in the round's mean: the attempt's weights where a member reported them
    (images processed, in sample-target rounds), else each member's partition size."""
    for s in by.values():
        w, m = s.get("weights"), s.get("members")
        if isinstance(w, list) and isinstance(m, list) and len(w) == len(m) and all(type(x) is int for x in w):
            return {str(p): x for p, x in zip(m, w)}
    return {str(p): s["n_samples"] for p, s in sorted(by.items())}


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of a non-empty list, interpolated linearly between order statistics,
    so the median of an even count is the mean of the middle two and the 90th percentile is never below it."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _slow(f, rounds: list[dict]) -> str:
    later = [r for r in rounds if r["round"] >= f.round]
    took = sum(f.peer in r["members"] for r in later)
    return (f"peer {f.peer} trained at 1/{f.slow_factor:g} of its speed from round {f.round} on; it was a member of "
            f"{took} of the {len(later)} rounds since")


def _handled(peer: int, rnd: int, phase: str, rounds: list[dict]) -> str:
    """How the rounds after a fault went: who completed them, and whether the peer came back."""
    first = rnd + 1 if phase == "between-rounds" else rnd    # a fault between rounds follows a commit
    for r in rounds:
        if r["round"] < first:
            continue
        if peer in r["dropped"]:
            how = f"round {r['round']} completed without peer {peer} by {sorted(r['digests'])} (attempt {r['attempts']} of the round)"
            return how + (f" after: {r['events'][0]}" if r["events"] else "")
        if peer in r["members"]:
            return f"peer {peer} was back in round {r['round']}"
    return "no later round recorded"


def write(run_dir: Path, summ: dict) -> Path:
    """summary.json, compact for runs of 1,000+ rounds: one line per round, per evaluation and
    per field of the other sections."""
    def block(value, indent: str) -> str:
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return "[\n" + ",\n".join(indent + "  " + json.dumps(v) for v in value) + "\n" + indent + "]"
        if isinstance(value, dict) and value:
            return "{\n" + ",\n".join(f"{indent}  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()) \
                + "\n" + indent + "}"
        return json.dumps(value)

    body = ",\n".join(f"  {json.dumps(k)}: {block(v, '  ')}" for k, v in summ.items())
    return atomic.write_text(Path(run_dir) / "summary.json", "{\n" + body + "\n}\n")
