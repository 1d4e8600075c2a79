"""The deterministic simulator at scale: seeds with faults, broken protocols, and large groups.

    python -m bench.simulate [--seeds 2000] [--workers 2] [--rounds 30] [--scale 16,32,64]

Part 1, seeds: `--seeds` runs of 5 peers, each of `--rounds` rounds with faults drawn from its
seed (kills and restarts at every fault point, cut links, dissent, corrupted downloads, drops,
duplicates, reordering), half of them with secure aggregation, in `--workers` processes. Every
invariant is checked after every event (p2pfed/sim/checks.py). A violation prints its seed and
its replay command. seeds_per_cpu_min counts the CPU time of the workers (the machine is shared:
CPU time, not wall time).

Part 2, broken protocols: for each deliberately broken variant (runner.VARIANTS), the seeds it
takes until the checks catch it (at most 200).

Part 3, scale: one fault-free run of N peers for each N of `--scale`, 2 rounds: messages and
bytes per peer per round (protocol and heartbeats apart), virtual seconds per round, and the
simulator's own seconds.

Last line: RESULT seeds=.. violations=.. limits=.. seeds_per_cpu_min=.. events_per_s=.. peers_max=..
seeds_to_find=<max over the variants that were caught> missed=<variants not caught within 200>
"""
from __future__ import annotations

import multiprocessing
import time

from bench import harness
from p2pfed.sim import runner


def _chunk(args: tuple) -> dict:
    seeds, rounds = args
    cpu, events, bad, limits = time.process_time(), 0, [], 0
    for seed in seeds:
        secure = seed % 2 == 1
        res = runner.run(seed, runner.Options(rounds=rounds, secure=secure))
        events += res.events
        limits += bool(res.limits)
        if not res.ok:
            bad.append(f"{res.summary()}\n  replay: python -m p2pfed.sim {seed} --rounds {rounds}"
                       + (" --secure" if secure else ""))
    return {"n": len(seeds), "cpu": time.process_time() - cpu, "events": events, "bad": bad, "limits": limits}


def seeds_part(n: int, workers: int, rounds: int) -> dict:
    chunks = [(list(range(i, n, 20 * workers))[:], rounds) for i in range(20 * workers)]
    chunks = [c for c in chunks if c[0]]
    total = {"n": 0, "cpu": 0.0, "events": 0, "bad": [], "limits": 0}
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for part in pool.imap_unordered(_chunk, chunks):
            for k in ("n", "cpu", "events", "limits"):
                total[k] += part[k]
            total["bad"] += part["bad"]
            for line in part["bad"]:
                print(line, flush=True)
    return total


def variants_part(within: int = 200) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for variant in runner.VARIANTS:
        secure = variant in ("ignore-seal", "seed-before-held", "forget-seal")
        found[variant] = None
        for seed in range(within):
            if not runner.run(seed, runner.Options(rounds=30, secure=secure, variant=variant)).ok:
                found[variant] = seed + 1
                break
        print(f"variant {variant}: " + (f"caught at seed {found[variant] - 1} ({found[variant]} seeds)"
                                        if found[variant] else f"not caught within {within} seeds"), flush=True)
    return found


def scale_part(sizes: list[int]) -> int:
    print("peers  msgs/peer/round  hb/peer/round  KB/peer/round  virtual_s/round  sim_s", flush=True)
    biggest = 0
    for n in sizes:
        t = time.perf_counter()
        res = runner.run(1, runner.Options(peers=n, rounds=2, faults=False))
        took = time.perf_counter() - t
        rounds = max(res.commit_at, default=0)
        if not res.ok or rounds < 2:
            print(f"{n:5d}  failed: {res.failure}", flush=True)
            continue
        per = n * rounds
        round_s = res.commit_at[2] - res.commit_at[1]
        print(f"{n:5d}  {(res.messages - res.heartbeats) / per:15.1f}  {res.heartbeats / per:13.1f}  "
              f"{res.bytes / per / 1024:13.1f}  {round_s:15.3f}  {took:5.1f}", flush=True)
        biggest = n
    return biggest


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--seeds", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--scale", default="16,32,64")
    args = ap.parse_args()
    started = time.perf_counter()
    total = seeds_part(args.seeds, args.workers, args.rounds)
    print(f"seeds: {total['n']} in {time.perf_counter() - started:.0f} s wall, {total['cpu']:.0f} s CPU; "
          f"violations {len(total['bad'])}; runs stopped by the documented round-1 limit {total['limits']}",
          flush=True)
    found = variants_part()
    peers_max = scale_part([int(x) for x in args.scale.split(",") if x])
    caught = [v for v in found.values() if v]
    missed = [k for k, v in found.items() if not v]
    harness.result({"seeds": total["n"], "violations": len(total["bad"]), "limits": total["limits"],
                    "seeds_per_cpu_min": f"{total['n'] / total['cpu'] * 60:.0f}",
                    "events_per_s": f"{total['events'] / total['cpu']:.0f}", "peers_max": peers_max,
                    "seeds_to_find": max(caught) if caught else "none", "missed": ",".join(missed) or "none"})


if __name__ == "__main__":
    main()
