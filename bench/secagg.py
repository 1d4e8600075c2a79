"""Secure aggregation's cost: ready -> commit of N peer processes averaging full MobileNetV2 round
states with security.secure_aggregation on and off, side by side in one run, and where its time goes.

    python -m bench.secagg [--peers 5,10,32] [--rounds 7] [--repeats 2] [--width-mult 1.0] [--mask-degree D]

Time per round = from the moment the last peer is ready to the moment the last peer has committed,
wall clock across the processes, median over rounds (the first skipped: connection warm-up) and
over the repeats, which alternate plain and secure runs. The split is measured in this process
for one member with the same vector: key agreement (X25519 + HKDF with N - 1 peers, once per run),
PRG (AES-256-CTR: on each other shard the streams of its pairs with every member, or with
--mask-degree D its D neighbours, but the shard's reducer, and its self-mask; plus N - 1 self-mask
slices to unmask its own shard), fixed point (encode the vector, decode a shard). The exchange is the rest.
Each count of `--peers` (at least 3: secure aggregation refuses rounds of two) is measured in turn;
the split and the bytes are the first count's.
Last line: RESULT peers=N plain_ms=.. secagg_ms=.. ratio=.. plain_bytes=.. secagg_bytes=.. ...
bytes_ratio=.. ratio_N=.. for every N of --peers
"""
from __future__ import annotations

import json
import statistics
import time

from bench import harness
from bench.averaging import close_when_all_committed, connect, model_state, ready_to_commit_ms


def worker(args) -> None:
    from p2pfed.consensus.masked import Secure
    t, mb, ar, ids, state, model_bytes = connect(args, Secure(degree=args.mask_degree) if args.secure else None)
    sent, ready_at, commit_at, members = [], [], [], None
    for r in range(1, args.rounds + 1):
        ready_at.append(time.time())
        res = ar.run(r, state, 1000 + args.rank, members)
        commit_at.append(time.time())
        sent.append(res.bytes_sent)
        members = list(res.committed.members)     # each round averages the same inputs again
        t.set_status(committed=r)
    close_when_all_committed(t, mb, ids, args.rank, args.rounds)
    print(json.dumps({"bytes": sent, "ready_at": ready_at, "commit_at": commit_at, "model_bytes": model_bytes}),
          flush=True)


def run(secure: bool, n: int, rounds: int, width: float, degree: int = 0) -> list[dict]:
    """n workers averaging the same states for `rounds` rounds, masked or not: what each one reported."""
    from p2pfed.run.launch.preflight import free_ports
    ports = free_ports(n)
    argvs = [["--worker", "--rank", str(rank), "--rounds", str(rounds), "--width-mult", str(width),
              "--ports", json.dumps(ports), "--mask-degree", str(degree)] + (["--secure"] if secure else [])
             for rank in range(n)]
    return harness.run_workers("bench.secagg", argvs, what=f"{'secure' if secure else 'plain'} workers",
                               timeout_s=600)


def split_ms(n: int, width: float, degree: int = 0) -> dict:
    """One member's secure-aggregation work for the full vector, timed here (median of 3)."""
    import numpy as np
    from p2pfed.consensus import averaging, secagg
    flat = averaging.flatten(model_state(width, 0))
    size, members = flat.size, list(range(n))
    keys = [secagg.MaskKey() for _ in members]
    public = {m: k.public for m, k in zip(members, keys)}
    lo, hi = averaging.shard_bounds(size, n)[0]
    seeds = [secagg.new_seed() for _ in members]

    def timed(f) -> float:
        out = []
        for _ in range(3):
            t0 = time.perf_counter()
            f()
            out.append(1000 * (time.perf_counter() - t0))
        return statistics.median(out)

    bounds = averaging.shard_bounds(size, n)
    total = np.zeros(hi - lo, secagg.U64)
    return {
        "keys": timed(lambda: [secagg.MaskKey().pair_key(public[m]) for m in members[1:]]),
        "prg": timed(lambda: (secagg.masks(keys[0], 0, public, seeds[0], 1, 0, bounds, degree),   # pair or neighbour
                              [secagg.self_mask(s, secagg.nonce(1, 0, members, "self"), lo, hi) for s in seeds[1:]])),
        "fixed_point": timed(lambda: (secagg.encode(flat, 0.2), secagg.decode(total))),
    }


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--peers", default="5", help="peer counts, comma-separated, each at least 3")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--secure", action="store_true")
    ap.add_argument("--mask-degree", type=int, default=0, help="security.mask_degree (0: every pair)")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--ports", default="[]")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    counts = [int(x) for x in args.peers.split(",")]
    if min(counts) < 3:
        raise SystemExit(f"--peers {args.peers}: secure aggregation needs at least 3 peers (a round of two shows "
                         f"each member the other's update)")
    ratios = {}
    for n in counts:
        times = {False: [], True: []}
        sent = {}
        for _ in range(args.repeats):
            for secure in (False, True):
                ws = run(secure, n, args.rounds, args.width_mult, args.mask_degree)
                times[secure] += ready_to_commit_ms(ws, args.rounds)
                sent[secure] = statistics.median(w["bytes"][-1] for w in ws)
                model = ws[0]["model_bytes"]
        ratios[n] = statistics.median(times[True]) / statistics.median(times[False])
        print(f"{n} peers: plain {statistics.median(times[False]):.1f} ms, secure {statistics.median(times[True]):.1f} "
              f"ms per round ({ratios[n]:.2f}x)", flush=True)
        if n == counts[0]:
            first = (times, dict(sent), model)
    n = counts[0]
    times, sent, model = first
    plain, secure = statistics.median(times[False]), statistics.median(times[True])
    split = split_ms(n, args.width_mult, args.mask_degree)
    exchange = secure - split["prg"] - split["fixed_point"]
    print(f"{n} peers, model {model / 1e6:.2f} MB, {args.rounds} rounds x {args.repeats} repeats (first round of "
          f"each skipped), 2 cores shared by all processes")
    print(f"ready -> commit, plain:               {plain:8.1f} ms median per round")
    print(f"ready -> commit, secure aggregation:  {secure:8.1f} ms  ({secure / plain:.2f}x)")
    print(f"  key agreement (once per run):       {split['keys']:8.1f} ms")
    print(f"  PRG (AES-256-CTR masks):               {split['prg']:8.1f} ms per round and member")
    print(f"  fixed point (encode, decode):       {split['fixed_point']:8.1f} ms")
    print(f"  exchange and the rest:              {exchange:8.1f} ms")
    print(f"bytes sent per peer per round: plain {sent[False] / 1e6:.2f} MB ({sent[False] / model:.2f} x model), "
          f"secure {sent[True] / 1e6:.2f} MB ({sent[True] / model:.2f} x model)")
    harness.result({"peers": n, "plain_ms": f"{plain:.1f}", "secagg_ms": f"{secure:.1f}",
                    "ratio": f"{secure / plain:.2f}", "keys_ms": f"{split['keys']:.1f}",
                    "prg_ms": f"{split['prg']:.1f}",
                    "fixed_point_ms": f"{split['fixed_point']:.1f}", "exchange_ms": f"{exchange:.1f}",
                    "plain_bytes": f"{sent[False]:.0f}", "secagg_bytes": f"{sent[True]:.0f}",
                    "bytes_ratio": f"{sent[True] / sent[False]:.2f}",
                    **{f"ratio_{k}": f"{r:.2f}" for k, r in ratios.items()}})


if __name__ == "__main__":
    main()
