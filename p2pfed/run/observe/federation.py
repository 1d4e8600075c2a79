"""The federation as one page shows it: pure functions over what peers report (no I/O).

A peer's status (run/observe/status.py, served at /status and written to RUN_DIR/status/peer-K.json) and
`p2pfed watch`'s /status.json have one schema (docs/observability.md):

    t         unix time of the view
    source    who saw it: "peer K", or "run dir PATH" for a merge of every peer's file
    run       {"peers": configured ids, "rounds": the run's rounds, "epochs": its epochs}
    peers     one row per configured peer: id, state (live | dead | left | finished | failed |
              starting), round, stage, committed (last committed round), heard_s (seconds since
              the viewer last heard from it), epoch
    accuracy  one row per evaluated round whose members have all reported: round, epoch,
              accuracy (whole test set, [0, 1]), test_loss, members
    rounds    the newest KEEP_ROUNDS committed rounds: round, epoch, members, left_out (configured
              peers not in it), dropped (members of the round before that are not in it),
              attempts, train_s, wait_s, exchange_s, eval_s (each the slowest member's), events
    faults    round, peer, what: injected faults that fired, and peers dropped from a round
"""
from __future__ import annotations

import math

KEEP_ROUNDS = 300        # rounds a view keeps (the page shows the newest)
EVENTS_PER_ROUND = 8     # event strings kept per round, each cut to EVENT_CHARS
EVENT_CHARS = 200
STAGES = ("start", "sync", "train", "wait", "exchange", "eval", "done", "quantize")
ENDED = ("finished", "failed")


def _num(v, default=0.0) -> float:
    """A finite number from untrusted data, else default (no NaN or infinity reaches the JSON)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else default


def round_row(rnd: int, by: dict[int, dict], ids: list[int], prev: list[int] | None) -> dict:
    """One timeline row from the round's reports (peer -> valid stats, consensus/writer.py)."""
    members = sorted({int(m) for s in by.values() for m in s["members"]})
    events = sorted({e[:EVENT_CHARS] for s in by.values() for e in s["events"] if isinstance(e, str)})
    return {
        "round": rnd,
        "epoch": max((_num(s.get("epoch")) for s in by.values()), default=0.0),
        "members": members,
        "reported": sorted(by),
        "left_out": sorted(set(ids) - set(members)),
        "dropped": sorted(set(prev) - set(members)) if prev is not None else [],
        "attempts": 1 + max(int(s["attempt"]) for s in by.values()),
        "train_s": max(_num(s.get("train_s")) for s in by.values()),
        "wait_s": max(_num(s.get("wait_s")) for s in by.values()),
        "exchange_s": max(_num(s.get("averaging_s")) for s in by.values()),
        "eval_s": max(_num(s.get("eval_s")) for s in by.values()),
        "events": events[:EVENTS_PER_ROUND],
    }


def consensus(rnd: int, by: dict[int, dict]) -> dict | None:
    """The round's consensus accuracy once every member has reported its test slice: the sum
    of their correct counts over the sum of their slices (one model, one number); else None."""
    members = sorted({int(m) for s in by.values() for m in s["members"]})
    if not members or any(m not in by or "total" not in by[m] for m in members):
        return None
    total = sum(by[m]["total"] for m in members)
    if total <= 0:
        return None
    return {"round": rnd, "epoch": max(_num(by[m].get("epoch")) for m in members),
            "accuracy": sum(by[m]["correct"] for m in members) / total,
            "test_loss": sum(_num(by[m]["loss_sum"]) for m in members) / total, "members": members}


def timeline(reports: dict[int, dict[int, dict]], ids: list[int]) -> tuple[list[dict], list[dict]]:
    """(rounds, accuracy) of the newest KEEP_ROUNDS rounds of round -> peer -> stats."""
    rows, acc, prev = [], [], None
    for r in sorted(reports):
        if not reports[r]:
            continue
        rows.append(round_row(r, reports[r], ids, prev))
        prev = rows[-1]["members"]
        c = consensus(r, reports[r])
        if c:
            acc.append(c)
    return rows[-KEEP_ROUNDS:], acc


_NOW = {"dead": "; not heard from since", "left": "; it has left the run", "starting": "; never heard from"}


def dropped_faults(rounds: list[dict], states: dict[int, str] | None = None) -> list[dict]:
    """A fault row for each peer dropped from a round: the round's first event says why, else
    what the viewer knows of the peer now (states: peer -> state)."""
    states = states or {}
    return [{"round": r["round"], "peer": p,
             "what": f"left out of round {r['round']}" + (f": {r['events'][0]}" if r["events"]
                                                           else _NOW.get(states.get(p, ""), ""))}
            for r in rounds for p in r["dropped"]]


def heartbeat_row(pid: int, heard_s: float | None, dead_after_s: float, said_bye: bool, hb: dict,
                  epoch: float | None) -> dict:
    """Another peer's row as I see it: from its last heartbeat (untrusted: only well-typed fields)."""
    if heard_s is None:
        state = "starting"
    elif said_bye:
        state = "left"
    elif heard_s >= dead_after_s:
        state = "dead"
    else:
        state = "live"

    def count(key):
        v = hb.get(key)
        return v if type(v) is int and 0 <= v < 2**31 else None
    stage = hb.get("phase") if hb.get("phase") in STAGES else None
    return {"id": pid, "state": state, "round": count("round"), "stage": stage, "committed": count("committed"),
            "heard_s": None if heard_s is None else round(heard_s, 2), "epoch": epoch}


def merge(snapshots: list[dict], now: float, stale_s: float, source: str = "") -> dict:
    """One view from the status files of a run's peers (each a peer's own view, written every
    second). A peer is what its own file says while that file is fresh (written within stale_s)
    or says it ended; a peer whose file went stale without ending died (killed, crashed) unless
    a fresh peer still hears it; a peer without a file is what the fresh peers say of it."""
    snaps = [s for s in snapshots if isinstance(s, dict) and isinstance(s.get("from"), int)]
    fresh = [s for s in snaps if now - _num(s.get("t")) <= stale_s]
    own = {s["from"]: s for s in snaps}
    ids = sorted({i for s in snaps for i in s.get("run", {}).get("peers", [])} | set(own))
    rows = []
    for pid in ids:
        mine = own.get(pid)
        self_row = next((r for r in mine.get("peers", []) if r.get("id") == pid), None) if mine else None
        if mine and self_row and (mine.get("state") in ENDED or mine in fresh):
            age = now - _num(mine.get("t"))
            rows.append({**self_row, "state": mine.get("state") if mine.get("state") in ENDED else "live",
                         "heard_s": round(max(0.0, age), 2)})
            continue
        seen = [(_num(r.get("heard_s"), 1e18) + now - _num(s.get("t")), r) for s in fresh for r in s.get("peers", [])
                if r.get("id") == pid and r.get("heard_s") is not None]
        if seen:
            heard, row = min(seen, key=lambda x: x[0])
            state = row["state"] if row["state"] in ("live", "left") else "dead"
            if mine and state == "live" and heard > stale_s:
                state = "dead"
            rows.append({**row, "state": state, "heard_s": round(heard, 2)})
        elif self_row:           # its file went stale and nobody hears it
            rows.append({**self_row, "state": "dead", "heard_s": round(now - _num(mine.get("t")), 2)})
        else:
            rows.append({"id": pid, "state": "starting", "round": None, "stage": None, "committed": None,
                         "heard_s": None, "epoch": None})
    by_round: dict[int, dict] = {}
    for s in snaps:
        for r in s.get("rounds", []):
            have = by_round.get(r["round"])
            if have is None or len(r.get("reported", [])) > len(have.get("reported", [])):
                by_round[r["round"]] = r
    accuracy: dict[int, dict] = {}
    for s in snaps:
        for a in s.get("accuracy", []):
            accuracy.setdefault(a["round"], a)
    faults: dict[tuple, dict] = {}
    for s in snaps:       # one row per fault: viewers word a drop by what they know of the peer now
        for f in s.get("faults", []):
            faults.setdefault((f["round"], f["peer"], f["what"].split(";")[0]), f)
    runs = [s.get("run", {}) for s in snaps]
    run = {"peers": ids, "rounds": int(max((_num(r.get("rounds")) for r in runs), default=0)),
           "epochs": max((_num(r.get("epochs")) for r in runs), default=0.0)}
    return {"t": now, "source": source, "run": run,
            "peers": rows, "accuracy": [accuracy[r] for r in sorted(accuracy)],
            "rounds": [by_round[r] for r in sorted(by_round)][-KEEP_ROUNDS:],
            "faults": sorted(faults.values(), key=lambda f: (f["round"], f["peer"], f["what"]))}
