"""Helpers for tests that run real peers: a tiny, fast config and process control."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from p2pfed import config
from p2pfed.consensus.averaging import is_float
from p2pfed.run.launch.preflight import free_ports

FAST = dict(
    data={"dataset": "synthetic", "synthetic_train": 1000, "synthetic_test": 300},
    model={"width_mult": 0.1},
    train={"rounds": 2, "batch_size": 32, "local_epochs": 4.0, "max_steps": 25, "threads": 1, "optimizer": "adamw", "lr": 0.01,
           "lr_scaling": "none", "schedule": "constant", "bn_pool_images": 128},
    averaging={"heartbeat_interval_s": 0.2, "dead_after_s": 1.5, "exchange_timeout_s": 20.0,
               "ready_timeout_s": 60.0, "startup_timeout_s": 30.0, "fetch_timeout_s": 20.0},
    # TensorBoard off: importing its writer costs each peer process about 0.7 s of CPU, and the
    # suite starts hundreds; tests/test_observe.py turns it on where it checks the event files
    output={"dump_round_models": True, "tensorboard": False},
)


def make_config(tmp: Path, n: int, **sections) -> tuple[config.Config, Path]:
    """A config for n local peers with the FAST settings, overridden by sections; written to tmp."""
    cfg = config.replace_peers(config.Config(), config.local_peers(n, free_ports(n)))
    merged = {k: dict(v) for k, v in FAST.items()}
    for k, v in sections.items():
        if k == "train" and "local_steps" in v and "local_epochs" not in v:
            merged["train"] = {**merged["train"], "local_epochs": 0.0, "max_steps": 0}
        merged.setdefault(k, {}).update(v)
    merged.setdefault("output", {})["run_dir"] = str(tmp / "run")
    cfg = config.override(cfg, **merged)
    path = tmp / "peers.toml"
    path.write_text(config.dumps_toml(cfg))
    return cfg, path


def add_faults(path: Path, *faults: dict) -> None:
    """Append [[faults]] tables (key -> value) to the config file at path."""
    def value(v):
        return f'"{v}"' if isinstance(v, str) else repr(v)
    path.write_text(path.read_text() + "".join(
        "\n[[faults]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in f.items()) for f in faults))


def start_peer(procs, cfg_path: Path, peer_id: int, *extra: str) -> subprocess.Popen:
    run_dir = cfg_path.parent / "run"
    run_dir.mkdir(exist_ok=True)
    err = open(run_dir / f"peer-{peer_id}.stderr", "ab")
    return procs.start([sys.executable, "-m", "p2pfed", "peer", "--config", str(cfg_path), "--id", str(peer_id),
                        "--quiet", *extra], stdout=subprocess.DEVNULL, stderr=err)


def wait_all(ps, timeout_s: float, run_dir: Path | None = None) -> list[int]:
    """The peers' exit codes; with run_dir, a peer still running at the deadline fails the test
    with the story of every peer's log (what a CI failure needs to be understood)."""
    deadline = time.monotonic() + timeout_s
    codes = []
    for i, p in enumerate(ps):
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if run_dir is None:
                raise
            raise AssertionError(f"process {i} still running after {timeout_s} s\n{story(run_dir, len(ps))}") from None
    return codes


def story(run_dir: Path, n: int, lines: int = 25) -> str:
    """The last lines of each peer's log, without the per-step lines."""
    out = []
    for i in range(n):
        kept = [ln[11:300] for ln in peer_log(run_dir, i).splitlines() if " step " not in ln]
        out.append(f"--- peer {i}\n" + "\n".join(kept[-lines:]))
    return "\n".join(out)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def load_pre(run_dir: Path, rnd: int, peer: int) -> tuple[list[np.ndarray], int]:
    with np.load(run_dir / "pre" / f"round{rnd}-peer{peer}.npz") as z:
        n = int(z["n_samples"])
        arrays = [z[f"t{i}"] for i in range(len(z.files) - 1)]
    return arrays, n


def load_checkpoint_state(run_dir: Path, peer: int):
    import torch
    ck = torch.load(run_dir / "checkpoints" / f"peer-{peer}.pt", map_location="cpu", weights_only=True)
    return ck


def consensus_state(run_dir: Path):
    import torch
    return torch.load(run_dir / "consensus.pt", map_location="cpu", weights_only=True)


def peer_log(run_dir: Path, peer: int) -> str:
    p = run_dir / f"peer-{peer}.log"
    return p.read_text() if p.exists() else ""


def round_records(run_dir: Path, peer: int) -> dict[int, dict]:
    from p2pfed.outputs import metrics
    return {r["round"]: r for r in metrics.read(run_dir / f"metrics-{peer}.jsonl") if r["type"] == "round"}


def load_post(run_dir: Path, rnd: int, peer: int) -> list[np.ndarray] | None:
    p = run_dir / "pre" / f"round{rnd}-peer{peer}-post.npz"
    if not p.exists():
        return None
    with np.load(p) as z:
        return [z[f"t{i}"] for i in range(len(z.files) - 1)]


def check_round_exact(run_dir: Path, rnd: int, members: list[int], holders: list[int]) -> float:
    """Every holder's post-round model equals the float64 weighted mean of the members' pre-round
    models (1e-6 relative); all holders are bit-identical; integer buffers come from min(members).
    Returns the worst relative error."""
    from p2pfed.consensus import digest
    pres = {m: load_pre(run_dir, rnd, m) for m in members}
    states = [OrderedDict((str(i), a) for i, a in enumerate(pres[m][0])) for m in sorted(members)]
    weights = [pres[m][1] for m in sorted(members)]
    ref = reference_mean(states, weights)
    worst = 0.0
    first = None
    for h in holders:
        post = load_post(run_dir, rnd, h)
        assert post is not None, f"peer {h} has no post-round model for round {rnd}"
        got = OrderedDict((str(i), a) for i, a in enumerate(post))
        worst = max(worst, max_relative_error(got, ref))
        for i, a in enumerate(post):
            if not np.issubdtype(a.dtype, np.floating):
                assert np.array_equal(a, pres[min(members)][0][i]), "integer buffer not copied from lowest id"
        if first is None:
            first = digest.digest(got)
        assert digest.digest(got) == first, f"peer {h} differs from peer {holders[0]} in round {rnd}"
    assert worst < 1e-6, f"round {rnd}: relative error {worst}"
    return worst


def reference_mean(states: list[dict], weights: list[float]) -> "OrderedDict[str, np.ndarray]":
    """Float64 reference: weighted mean of float arrays, ints from states[0]."""
    total = float(sum(weights))
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, ref in states[0].items():
        if is_float(ref):
            out[name] = sum(np.asarray(s[name], np.float64) * (w / total) for s, w in zip(states, weights))
        else:
            out[name] = np.array(ref)
    return out


def max_relative_error(state: dict, reference: dict) -> float:
    """max |a - b| / max(|b|, tiny) over all float arrays; the invariant bounds this by 1e-6."""
    worst = 0.0
    for name, ref in reference.items():
        if not is_float(ref):
            continue
        a = np.asarray(state[name], np.float64)
        b = np.asarray(ref, np.float64)
        scale = np.maximum(np.abs(b), 1e-6)
        if a.size:
            worst = max(worst, float(np.max(np.abs(a - b) / scale)))
    return worst


def committed_digests(run_dir: Path, n: int) -> dict[int, set[str]]:
    """round -> every digest a member recorded for it, over every peer and every life of it: a
    round committed twice (two digests) would show as a set of two."""
    from p2pfed.outputs import metrics
    out: dict[int, set[str]] = {}
    for peer in range(n):
        for r in metrics.read(run_dir / f"metrics-{peer}.jsonl"):
            if r["type"] == "round":
                out.setdefault(r["round"], set()).add(r["digest"])
    return out
