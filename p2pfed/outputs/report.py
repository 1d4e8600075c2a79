"""Run report: RUN_DIR/plots/*.png and RUN_DIR/summary.md, from the run's files only.

Inputs: metrics-<id>.jsonl (every peer), summary.json (the writer), quantization.json (if the
run was quantized), and optionally a centralized reference run dir (metrics-central.jsonl).
The plots themselves are in plots.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import atomic, metrics
from .plots import (partition_counts, plot_accuracy, plot_averaging, plot_loss, plot_partition, plot_quant_accuracy,
                    plot_sites, plot_sizes, plot_timeline)
from .summary import quantile

def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def render(run_dir: Path, reference: Path | None = None) -> Path:
    """Write every plot and summary.md; returns the summary.md path."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    recs = metrics.read_run(run_dir)
    summ = _read_json(run_dir / "summary.json")
    q = _read_json(run_dir / "quantization.json")
    ref = metrics.read(Path(reference) / "metrics-central.jsonl") if reference else None
    drawn = {"loss": plot_loss(recs, plots / "loss.png"), "timeline": plot_timeline(recs, plots / "timeline.png")}
    if partition_counts(recs)[1]:
        drawn["partition"] = plot_partition(recs, plots / "partition.png")
    if summ:
        drawn["accuracy"] = plot_accuracy(summ, ref, plots / "accuracy.png", recs)
        drawn["averaging"] = plot_averaging(summ, plots / "averaging.png")
        if summ.get("sites"):
            drawn["sites"] = plot_sites(summ, plots / "sites.png")
    if q:
        drawn["sizes"] = plot_sizes(q, plots / "sizes.png")
        drawn["quant_accuracy"] = plot_quant_accuracy(q, plots / "quant_accuracy.png")
    atomic.write_text(run_dir / "plots" / "data.json", json.dumps(drawn, indent=1, default=str))
    return atomic.write_text(run_dir / "summary.md", summary_md(run_dir, summ, q, drawn))


def summary_md(run_dir: Path, summ: dict | None, q: dict | None, drawn: dict) -> str:
    cfg_text = (run_dir / "config.toml").read_text() if (run_dir / "config.toml").exists() else ""
    out = [f"# p2pfed run `{run_dir.name}`", ""]
    if not summ:
        return "\n".join(out + _unfinished(drawn))
    agree = all(r["digests_agree"] for r in summ["rounds"])
    fin = summ["final"]
    acc = "n/a" if fin["accuracy"] is None else f"{100 * fin['accuracy']:.2f}%"
    pooled = " (BatchNorm statistics pooled over all peers)" if fin.get("bn_pooled") else ""
    out += [f"**{len(summ['peers'])} peers, {len(summ['rounds'])} rounds. Final test accuracy {acc}{pooled}. "
            f"Digests {'agreed in every round' if agree else 'DID NOT AGREE in some round'}.** "
            f"Final model: {fin['model_bytes'] / 1e6:.2f} MB, SHA-256 `{fin['digest'][:16]}...`, "
            f"held by peers {fin['members']}.", ""]
    evals = summ.get("evaluations") or [{"epoch": r["round"], "round": r["round"], "accuracy": r["accuracy"],
                                         "test_loss": r["test_loss"]} for r in summ["rounds"] if r["accuracy"] is not None]
    out += ["## Accuracy by epoch (consensus, dev/test split of this run's data)", "",
            "| epoch | round | accuracy | test loss |", "|---|---|---|---|"]
    for e in evals:
        loss = "n/a" if e.get("test_loss") is None else f"{e['test_loss']:.3f}"
        out.append(f"| {e['epoch']:.2f} | {e['round']} | {100 * e['accuracy']:.2f}% | {loss} |")
    rounds = summ["rounds"]
    sync = [r.get("sync_s", r["averaging_s"]) for r in rounds]
    avg = [r["averaging_s"] for r in rounds]
    mb = [sum(r["bytes_sent"].values()) / len(r["bytes_sent"]) / 1e6 for r in rounds]
    retried = [r["round"] for r in rounds if r["attempts"] > 1 or r["events"]]
    out += ["", "## Rounds", "",
            f"{len(rounds)} rounds. Ready -> commit: median {quantile(sync, 0.5):.3f} s, 90th percentile "
            f"{quantile(sync, 0.9):.3f} s; group -> commit median {quantile(avg, 0.5):.3f} s. "
            f"{sum(mb) / len(mb):.2f} MB sent per peer per round on average. "
            + (f"Rounds with retried attempts or events: {_ranges(retried)}." if retried else
               "Every round succeeded at its first attempt.") if rounds else "No round completed.",
            "", "Every round's members, digests and times are in summary.json (one line per round)."]
    out += _partition_md(run_dir)
    out += _sites_md(summ)
    out += ["", "![accuracy](plots/accuracy.png)", "", "![training loss](plots/loss.png)", "",
            "![averaging](plots/averaging.png)", "", "## Faults", ""]
    events = [(r["round"], e) for r in summ["rounds"] for e in r["events"]]
    drops = [(r["round"], r["dropped"]) for r in summ["rounds"] if r["dropped"]]
    restarted = summ.get("restarts") or {}
    if not summ["faults"] and not events and not drops and not restarted:
        out.append("No faults: every peer took part in every round.")
    for p, v in restarted.items():
        out.append(f"- peer {p} died and was restarted by its supervisor {v['restarts']} time"
                   f"{'s' if v['restarts'] != 1 else ''}; it reported again in round{'s' if len(v['back_in']) != 1 else ''} "
                   f"{_ranges(v['back_in'])}")
    for f in summ["faults"]:
        out.append(f"- injected: peer {f['peer']} {f['action']} at {f['phase']} of round {f['round']}: {f['handled']}")
    for rnd, who in drops:
        out.append(f"- round {rnd} went on without peers {who}")
    for rnd, e in events:
        out.append(f"- round {rnd}: {e}")
    out += ["", "![timeline](plots/timeline.png)", ""]
    if q:
        from .comparison import format_table
        out += ["## Quantization", "", "```", format_table(q), "```", "",
                f"Latency: median ms at batch 1 and 64, {q['threads']} thread(s). INT8 ONNX ops in the file: "
                f"{', '.join(q['int8_onnx_ops'])}." + _runtime_ops_text(q), "", "![sizes](plots/sizes.png)", "",
                "![quantized accuracy](plots/quant_accuracy.png)", ""]
    out += ["## Config", "", "```toml", cfg_text.strip(), "```", ""]
    return "\n".join(out)


def _sites_md(summ: dict) -> list[str]:
    """Own data: the final model's accuracy at each site and pooled, and the unreadable images."""
    out = []
    if summ.get("sites"):
        out += ["", "## Sites (the final model on each site's own test folder)", "",
                "| site | training images | test images | accuracy |", "|---|---|---|---|"]
        for k, v in summ["sites"].items():
            acc = "n/a (no test folder)" if v["accuracy"] is None else f"{100 * v['accuracy']:.2f}%"
            who = "all sites, pooled" if k == "pooled" else f"peer {k}"
            out.append(f"| {who} | {v.get('train_images', '') or ''} | {v['total']} | {acc} |")
        out += ["", "![sites](plots/sites.png)"]
    if summ.get("unreadable"):
        out += ["", "## Unreadable images (skipped)", ""]
        for k, v in summ["unreadable"].items():
            names = ", ".join("`" + "".join(ch for ch in f if ch.isprintable() and ch != "`") + "`" for f in v["files"][:10])
            out.append(f"- peer {k}: {v['count']} skipped: {names}"
                       + (" ..." if v["count"] > 10 else ""))
    return out


def _partition_md(run_dir: Path) -> list[str]:
    """Each peer's images per class, as a table, and its plot."""
    names, counts = partition_counts(metrics.read_run(run_dir))
    if not counts:
        return []
    n = max(len(c) for c in counts.values())
    names = [names[c] if c < len(names) else f"class {c}" for c in range(n)]
    out = ["", "## Data partition (training images per peer and class)", "",
           "| peer | images | " + " | ".join(names) + " |", "|---" * (n + 2) + "|"]
    for p, c in sorted(counts.items()):
        out.append(f"| {p} | {sum(c)} | " + " | ".join(str(v) for v in c) + " |")
    return out + ["", "![partition](plots/partition.png)"]


def _unfinished(drawn: dict) -> list[str]:
    """summary.md of a run that wrote no summary.json: how far each peer got, and the plots that
    need only the metrics files."""
    last = drawn.get("timeline", {}).get("last_round", {})
    lines = ["**No consensus: no summary.json was written, so the run did not finish.** Each peer's log "
             "(peer-ID.log) says why; `p2pfed status` shows how far it got.", ""]
    lines += [f"- peer {p}: last committed round {r}" for p, r in sorted(last.items(), key=lambda pr: int(pr[0]))]
    return lines + ["", "![training loss](plots/loss.png)", "", "![timeline](plots/timeline.png)", ""]


def _ranges(rounds: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    out, start = [], None
    for i, r in enumerate(rounds):
        if start is None:
            start = r
        if i + 1 == len(rounds) or rounds[i + 1] != r + 1:
            out.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ", ".join(out)


def _runtime_ops_text(q: dict) -> str:
    ops = q.get("int8_onnx_runtime_ops")     # absent in files written before it was recorded
    if not ops:
        return ""
    return " ONNX Runtime runs, after fusing: " + ", ".join(f"{n} {k}" for k, n in sorted(ops.items())) + "."


def status_text(run_dir: Path) -> str:
    """A few lines on a run, from its files: per peer round/phase/loss; the result if finished."""
    recs = metrics.read_run(run_dir)
    lines = [f"run {run_dir}"]
    now = time.time()
    for pid, rs in sorted(recs.items()):
        if not rs:
            continue
        last = rs[-1]
        phase = next((r["phase"] for r in reversed(rs) if r["type"] == "phase"), "?")
        loss = next((r["loss"] for r in reversed(rs) if r["type"] == "step"), None)
        acc = next((r["correct"] / r["total"] for r in reversed(rs) if r["type"] == "round" and r["total"]), None)
        faults = [r for r in rs if r["type"] == "fault"]
        lines.append(f"peer {pid}: round {last.get('round', '?')} {phase}"
                     + (f", loss {loss:.3f}" if loss is not None else "")
                     + (f", last accuracy {100 * acc:.1f}%" if acc is not None else "")
                     + f", last record {now - last['t']:.0f} s ago"
                     + (f", {len(faults)} injected fault(s)" if faults else ""))
    summ = _read_json(run_dir / "summary.json")
    if summ:
        fin = summ["final"]
        acc = "n/a" if fin["accuracy"] is None else f"{100 * fin['accuracy']:.2f}%"
        agree = all(r["digests_agree"] for r in summ["rounds"])
        lines.append(f"finished: {len(summ['rounds'])} rounds, accuracy {acc}, digests agreed: {agree}, "
                     f"digest {fin['digest'][:16]}")
    else:
        lines.append("not finished (no summary.json yet)")
    return "\n".join(lines)
