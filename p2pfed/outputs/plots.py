"""The run's plots: RUN_DIR/plots/*.png. Each function draws one figure from the run's files and
returns the data it drew, so tests can check the series.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import atomic  # noqa: E402
from .summary import quantile  # noqa: E402

PHASE_COLORS = {"train": "#4c72b0", "wait": "#c9c9c9", "exchange": "#dd8452", "eval": "#55a868",
                "sync": "#8172b3", "start": "#eeeeee", "quantize": "#937860", "done": "#ffffff"}


def _save(fig, path: Path) -> Path:
    tmp = atomic.temp_path(path)
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return atomic.publish(tmp, path)


def _legend(ax, **kw) -> None:
    """A legend if anything on ax has a label (a run with no steps yet has none: no warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average, so thousands of noisy steps read as a curve."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y - (ys[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def plot_loss(recs: dict[int, list[dict]], out: Path) -> dict:
    """Training loss per peer against epochs and against wall time (moving average of 20 steps)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    t0 = min((r["t"] for rs in recs.values() for r in rs), default=0)
    series = {}
    for pid, rs in sorted(recs.items()):
        steps = [r for r in rs if r["type"] == "step"]
        if not steps:
            continue
        loss = _smooth([r["loss"] for r in steps], 20)
        epochs = [r.get("epoch", r["global_step"]) for r in steps]
        minutes = [(r["t"] - t0) / 60 for r in steps]
        series[pid] = (epochs, loss)
        a1.plot(epochs, loss, lw=1, label=f"peer {pid}")
        a2.plot(minutes, loss, lw=1, label=f"peer {pid}")
    a1.set(title="Training loss per peer (moving average, 20 steps)", xlabel="epoch", ylabel="cross-entropy loss")
    a2.set(title="... against wall time", xlabel="minutes since start")
    _legend(a1, fontsize=8)
    _save(fig, out)
    return {"peers": sorted(series), "points": {p: len(v[0]) for p, v in series.items()}}


def partition_counts(recs: dict[int, list[dict]]) -> tuple[list[str], dict[int, list[int]]]:
    """(class names, peer id -> images per class) from each peer's `plan` record."""
    names, counts = [], {}
    for pid, rs in sorted(recs.items()):
        plan = next((r for r in rs if r["type"] == "plan" and "class_counts" in r), None)
        if plan:
            counts[pid] = [int(c) for c in plan["class_counts"]]
            names = plan.get("classes") or names
    return list(names), counts


def plot_partition(recs: dict[int, list[dict]], out: Path) -> dict:
    """Each peer's training images by class: one stacked bar per peer."""
    names, counts = partition_counts(recs)
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(1, len(counts))))
    n_classes = max((len(c) for c in counts.values()), default=0)
    cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
    peers = sorted(counts)
    left = [0] * len(peers)
    for c in range(n_classes):
        widths = [counts[p][c] if c < len(counts[p]) else 0 for p in peers]
        ax.barh([f"peer {p}" for p in peers], widths, left=left, color=cmap(c % cmap.N),
                label=names[c] if c < len(names) else f"class {c}")
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set(title="Training images per peer, by class (the partition)", xlabel="images")
    if n_classes:
        _legend(ax, fontsize=7, ncol=min(5, n_classes), loc="upper center", bbox_to_anchor=(0.5, -0.3))
    _save(fig, out)
    return {"peers": peers, "counts": {p: counts[p] for p in peers}}


def plot_accuracy(summ: dict, reference: list[dict] | None, out: Path, recs: dict | None = None) -> dict:
    """The consensus' test accuracy at each evaluation, against epochs and against wall time."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    evals = summ.get("evaluations") or [{"epoch": r["round"], "round": r["round"], "accuracy": r["accuracy"]}
                                        for r in summ["rounds"] if r["accuracy"] is not None]
    epochs = [e["epoch"] for e in evals]
    acc = [100 * e["accuracy"] for e in evals]
    a1.plot(epochs, acc, "o-", label="federated consensus")
    data = {"epochs": epochs, "accuracy": acc}
    if reference:
        ref = [(r.get("epoch", r["round"]), 100 * r["correct"] / r["total"]) for r in reference if r["type"] == "round"]
        a1.plot([e for e, _ in ref], [a for _, a in ref], "s--", label="centralized reference")
        data["reference"] = ref
    # wall time: when the lowest peer id finished each evaluated round
    t0 = min((r["t"] for rs in (recs or {}).values() for r in rs), default=None)
    first = min(recs) if recs else None
    done = {r["round"]: r["t"] for r in (recs or {}).get(first, []) if r["type"] == "round" and r.get("total")}
    pts = [((done[e["round"]] - t0) / 60, 100 * e["accuracy"]) for e in evals if e["round"] in done and t0]
    if pts:
        a2.plot([m for m, _ in pts], [a for _, a in pts], "o-")
    data["minutes"] = pts
    a1.set(title="Test accuracy of the consensus model", xlabel="epoch", ylabel="accuracy (%)")
    a2.set(title="... against wall time", xlabel="minutes since start", ylabel="accuracy (%)")
    _legend(a1, fontsize=8)
    _save(fig, out)
    return data


def plot_averaging(summ: dict, out: Path) -> dict:
    """Per round: ready -> commit and group -> commit times, and bytes sent per peer."""
    rounds = [r["round"] for r in summ["rounds"]]
    sync = [r.get("sync_s", r["averaging_s"]) for r in summ["rounds"]]
    secs = [r["averaging_s"] for r in summ["rounds"]]
    mb = [sum(r["bytes_sent"].values()) / len(r["bytes_sent"]) / 1e6 for r in summ["rounds"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    style = "o" if len(rounds) <= 50 else "."
    a1.plot(rounds, sync, style, ms=3, color="#c9c9c9", label="ready -> commit (incl. waiting for peers)")
    a1.plot(rounds, secs, style, ms=3, color="#dd8452", label="group -> commit (all-reduce + agreement)")
    a1.set(title="Synchronisation time per round (max over peers)", xlabel="round", ylabel="seconds", yscale="log")
    _legend(a1, fontsize=8)
    a2.plot(rounds, mb, style, ms=3, color="#4c72b0", label="mean bytes sent per peer")
    fin = summ["final"]
    exchanged = fin.get("exchanged_bytes", fin["model_bytes"])     # summaries written before it existed
    what = "model size" if exchanged == fin["model_bytes"] else "averaged round state"
    a2.axhline(2 * exchanged / 1e6, color="k", ls="--", lw=1, label=f"2 x {what}")
    a2.set(title="Bytes sent per peer per round", xlabel="round", ylabel="MB")
    _legend(a2, fontsize=8)
    _save(fig, out)
    return {"rounds": len(rounds), "averaging_s_median": quantile(secs, 0.5) if secs else None,
            "sync_s_median": quantile(sync, 0.5) if sync else None}


def plot_sites(summ: dict, out: Path) -> dict:
    """How the one model serves each site (own data): left, the accuracy on each site's own test
    folder and on all of them pooled; right, the accuracy per class at each site (blank where a
    site has no test image of the class)."""
    sites = {k: v for k, v in summ["sites"].items() if k != "pooled"}
    pooled = summ["sites"].get("pooled", {})
    classes = summ.get("classes") or []
    names = [f"peer {k}" for k in sites] + ["pooled"]
    accs = [100 * (v["accuracy"] or 0) for v in sites.values()] + [100 * (pooled.get("accuracy") or 0)]
    grid = [[(100 * v["per_class"][c]["accuracy"]) if v["per_class"].get(c, {}).get("accuracy") is not None
             else float("nan") for c in classes] for v in sites.values()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 1.6 + 0.45 * len(names)), gridspec_kw={"width_ratios": [1, 2]})
    bars = a.barh(range(len(names)), accs, color=["#4c72b0"] * len(sites) + ["#55a868"])
    for bar, v in zip(bars, accs):
        a.text(v, bar.get_y() + bar.get_height() / 2, f" {v:.1f}%", va="center", fontsize=8)
    a.set_yticks(range(len(names)), names)
    a.invert_yaxis()
    a.set(xlim=(0, 105), xlabel="accuracy on the site's own test folder (%)", title="The consensus at each site")
    if classes and grid:
        im = b.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        b.set_xticks(range(len(classes)), classes, rotation=35, ha="right", fontsize=8)
        b.set_yticks(range(len(sites)), names[:-1])
        b.set_title("accuracy per class and site (%); blank: no test image")
        fig.colorbar(im, ax=b, fraction=0.03)
    _save(fig, out)
    return {"names": names, "accuracy": accs, "per_class": grid, "classes": classes}


def plot_sizes(q: dict, out: Path) -> dict:
    names = [n for n in q["order"] if n in q["rows"]]
    mb = [q["rows"][n]["bytes"] / 1e6 for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(range(len(names)), mb, color=["#4c72b0" if "fp32" in n else "#55a868" for n in names])
    for b, v in zip(bars, mb):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set(title="Model file size on disk", ylabel="MB")
    ax.legend(handles=[bars[0], bars[-1]], labels=["fp32", "int8"], fontsize=8)
    _save(fig, out)
    return {"names": names, "mb": mb}


def plot_quant_accuracy(q: dict, out: Path) -> dict:
    names = [n for n in q["order"] if n in q["rows"]]
    acc = [100 * q["rows"][n]["accuracy"] for n in names]
    agree = [100 * q["rows"][n]["agreement_with_fp32"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], acc, 0.4, label="test accuracy")
    ax.bar([i + 0.2 for i in x], agree, 0.4, label="top-1 agreement with fp32")
    ax.set_xticks(list(x), names, rotation=20, ha="right", fontsize=8)
    ax.set(title="fp32 vs INT8: accuracy and agreement", ylabel="%", ylim=(0, 105))
    _legend(ax, fontsize=8, loc="lower right")
    _save(fig, out)
    return {"names": names, "accuracy": acc, "agreement": agree}


def plot_timeline(recs: dict[int, list[dict]], out: Path) -> dict:
    fig, ax = plt.subplots(figsize=(10, 0.6 * max(3, len(recs)) + 1.2))
    t0 = min((r["t"] for rs in recs.values() for r in rs), default=0)
    spans: dict[int, list] = {}
    faults = []
    for row, (pid, rs) in enumerate(sorted(recs.items())):
        phases = [r for r in rs if r["type"] == "phase"]
        end_t = max(r["t"] for r in rs) if rs else t0
        spans[pid] = []
        by_phase: dict[str, list] = {}
        for a, b in zip(phases, phases[1:] + [None]):
            start, stop = a["t"] - t0, (b["t"] if b else end_t) - t0
            spans[pid].append((a["phase"], start, stop))
            if a["phase"] != "done":
                by_phase.setdefault(a["phase"], []).append((start, max(stop - start, 0.01)))
        for phase, bars in by_phase.items():     # one collection per phase: thousands of rounds stay fast
            ax.broken_barh(bars, (row - 0.4, 0.8), color=PHASE_COLORS.get(phase, "#999999"))
        for r in rs:
            if r["type"] == "fault":
                faults.append((pid, r["t"] - t0))
                ax.plot(r["t"] - t0, row, "rX", ms=12)
    ax.set_yticks(range(len(recs)), [f"peer {p}" for p in sorted(recs)])
    ax.set(title="What each peer was doing (X: injected fault)", xlabel="seconds since start")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for p, c in PHASE_COLORS.items() if p in ("train", "wait",
                                                                                                "exchange", "eval",
                                                                                                "sync")]
    ax.legend(handles, ["train", "wait", "exchange", "eval", "sync"], ncol=5, fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.25))
    _save(fig, out)
    last = {pid: max((r["round"] for r in rs if r["type"] == "round"), default=0) for pid, rs in recs.items()}
    return {"peers": sorted(spans), "spans": spans, "faults": faults, "last_round": last}
