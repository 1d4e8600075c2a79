"""The same small training over real links: N peers, each in its own network namespace on a
bridge (bench/netns.py), the links shaped to a bandwidth (tc tbf) and delayed (a relay,
bench/relay.py; this kernel has no netem). One run per profile, one after another, all on the
same data and recipe.

    sudo python -m bench.wan [--data ../shared/data/cifar10-dev.tar.xz] [--peers 5]
                             [--train-limit 10000] [--epochs 3] [--width-mult 0.5]
                             [--profiles lan,100mbit-20ms,20mbit-50ms] [--recipes default,slowlink]

Profiles: lan (unshaped), 100mbit-20ms, 20mbit-50ms (each host: that bandwidth up and down, that
one-way delay on every message it receives). Any `<N>mbit-<M>ms` works (`--link` style), and
`lan-<M>ms` adds only the delay.
Recipes (train.* on top of the defaults):
    default   the default recipe (k = 1, 2, 4 over the run, float32 shards)
    int8      the default recipe with int8 compressed shards and error feedback
    slowlink  int8 compressed shards with error feedback, k = 16 with outer Nesterov momentum
              (0.5, outer lr 0.5)
    auto      train.auto_steps: after round 4, k x a power of two and maybe int8, chosen from
              the agreed measured costs (consensus/autosteps.py)
For each run: wall time (first peer start to last exit), final accuracy on the dev test split,
sync share (time from ready to commit over the run's wall time, peer 0), and MB sent per peer
per round. The relay acknowledges at once and delays what it forwards, so TCP's window does not
feel the delay; ZeroMQ's own round trips (ready, part, reduced, digest) do.

Ends with RESULT lan_s=.. wan100_s=.. wan100_vs_lan=.. wan100_acc=.. lan_acc=.. (the first recipe
listed), plus each other recipe's time, time against the first recipe's LAN run, and accuracy on
the shaped profiles.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.netns import Hosts

RECIPES = {
    "default": {},
    "int8": {"compression": "int8"},
    "slowlink": {"compression": "int8", "local_steps": [16], "outer_momentum": 0.5, "outer_lr": 0.5},
    "auto": {"auto_steps": True},
}
PORT = 5550


def parse_profile(name: str) -> tuple[float | None, float]:
    """(mbit or None, one-way delay ms) of a profile name."""
    if name == "lan":
        return None, 0.0
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)mbit|lan)-(\d+(?:\.\d+)?)ms", name)
    if not m:
        raise SystemExit(f"profile {name!r}: use lan, <N>mbit-<M>ms or lan-<M>ms (e.g. 100mbit-20ms)")
    return (float(m.group(1)) if m.group(1) else None), float(m.group(2))


def run_profile(args, tmp: Path, profile: str, recipe: str) -> dict:
    from p2pfed import config
    mbit, delay_ms = parse_profile(profile)
    hosts = Hosts(args.peers, subnet=78)
    procs = []
    try:
        if mbit:
            hosts.shape(mbit)
        if delay_ms:
            hosts.delay(PORT, delay_ms)
        run = tmp / f"{profile}-{recipe}"
        cfg = config.override(config.Config(),
                              data={"dataset": "folder", "data_dir": args.data, "train_limit": args.train_limit},
                              model={"width_mult": args.width_mult},
                              train={"epochs": args.epochs, "threads": 1, **RECIPES[recipe]},
                              output={"run_dir": str(run)})
        cfg = config.replace_peers(cfg, hosts.peers(PORT, delayed=bool(delay_ms)))
        path = tmp / f"{profile}-{recipe}.toml"
        path.write_text(config.dumps_toml(cfg))
        run.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        for i in range(args.peers):
            err = open(run / f"peer-{i}.stderr", "ab")
            procs.append(subprocess.Popen(hosts.exec(i, [sys.executable, "-m", "p2pfed", "peer", "--config",
                                                         str(path), "--id", str(i), "--quiet"]),
                                          stdout=subprocess.DEVNULL, stderr=err))
        deadline = t0 + args.timeout
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
        wall = time.monotonic() - t0
        if any(codes):
            raise SystemExit(f"{profile}/{recipe}: peers exited {codes}\n{harness.log_tail(run)}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        hosts.close()
    s = harness.summary(run)
    rounds = s["rounds"]
    sync = sum(harness.sync_s(r) for r in rounds)
    mb = harness.bytes_per_peer_round(s) / 1e6
    return {"wall_s": wall, "acc": s["final"]["accuracy"], "rounds": len(rounds),
            "sync_share": sync / wall, "mb_per_round": mb}


def main() -> None:
    ap = harness.small_run_parser(__doc__)
    ap.add_argument("--profiles", "--link", default="lan,100mbit-20ms,20mbit-50ms")
    ap.add_argument("--recipes", default="default,int8,slowlink")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take")
    args = ap.parse_args()
    for sig in (signal.SIGTERM, signal.SIGINT):      # stop cleanly: peers, relays and namespaces go too
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    if os.geteuid() != 0:
        raise SystemExit("python -m bench.wan needs root (network namespaces and tc)")
    profiles, recipes = args.profiles.split(","), args.recipes.split(",")
    for p in profiles:
        parse_profile(p)
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-wan-"))
    print(f"{args.peers} peers, {args.train_limit or 'all'} images, {args.epochs:g} epochs, width "
          f"{args.width_mult}; runs in {tmp}", flush=True)
    print(f"{'profile':<14}{'recipe':<10}{'wall s':>8}{'vs lan':>8}{'acc %':>8}{'rounds':>8}{'sync share':>12}"
          f"{'MB/peer/round':>15}", flush=True)
    res: dict[tuple[str, str], dict] = {}
    for recipe in recipes:
        for profile in profiles:
            r = res[profile, recipe] = run_profile(args, tmp, profile, recipe)
            lan = res.get(("lan", recipe))
            vs = f"{r['wall_s'] / lan['wall_s']:.2f}" if lan else "-"
            print(f"{profile:<14}{recipe:<10}{r['wall_s']:8.0f}{vs:>8}{100 * r['acc']:8.2f}{r['rounds']:8d}"
                  f"{r['sync_share']:12.2f}{r['mb_per_round']:15.2f}", flush=True)
    first = recipes[0]
    fields = {}
    if ("lan", first) in res:
        fields["lan_s"] = f"{res['lan', first]['wall_s']:.0f}"
        fields["lan_acc"] = f"{100 * res['lan', first]['acc']:.2f}"
    if ("100mbit-20ms", first) in res:
        w = res["100mbit-20ms", first]
        fields["wan100_s"] = f"{w['wall_s']:.0f}"
        fields["wan100_acc"] = f"{100 * w['acc']:.2f}"
        if "lan_s" in fields:
            fields["wan100_vs_lan"] = f"{w['wall_s'] / res['lan', first]['wall_s']:.2f}"
    for other in recipes[1:]:
        for prof, key in (("100mbit-20ms", "wan100"), ("20mbit-50ms", "wan20")):
            if (prof, other) in res and ("lan", first) in res:
                r = res[prof, other]
                fields[f"{key}_{other}_s"] = f"{r['wall_s']:.0f}"
                fields[f"{key}_{other}_vs_lan"] = f"{r['wall_s'] / res['lan', first]['wall_s']:.2f}"
                fields[f"{key}_{other}_acc"] = f"{100 * r['acc']:.2f}"
    harness.result(fields)


if __name__ == "__main__":
    main()
