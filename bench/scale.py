"""Averaging time and bytes per peer against N, next to gloo all_reduce for the same N.

    python -m bench.scale [--peers 5 10 20] [--width-mult 0.25] [--rounds 5] [--plot docs/scale.png]

Uses bench.averaging's workers (N real processes on loopback, one run of p2pfed then one of gloo
per N). Last line: RESULT n=.. p2pfed_ms=.. gloo_ms=.. bytes_per_peer=.. (lists, in N order)
"""
from __future__ import annotations

import statistics

from bench import averaging, harness


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--peers", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--width-mult", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--plot", default="")
    args = ap.parse_args()
    rows = []
    for n in args.peers:
        p = averaging.run("p2pfed", n, args.rounds, args.width_mult)
        g = averaging.run("gloo", n, args.rounds, args.width_mult)
        # ready -> commit with every peer ready together, as in bench.averaging
        p_ms = statistics.median(averaging.ready_to_commit_ms(p, args.rounds))
        g_ms = statistics.median(averaging.slowest_ms(g, args.rounds))
        per_peer = statistics.median(w["bytes"][-1] for w in p)
        rows.append((n, p_ms, g_ms, per_peer, p[0]["model_bytes"]))
        print(f"N={n:3d}  p2pfed {p_ms:8.1f} ms  gloo {g_ms:8.1f} ms  ratio {p_ms / g_ms:5.2f}  "
              f"bytes/peer {per_peer / 1e6:6.2f} MB = {per_peer / rows[-1][4]:.2f} x model", flush=True)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ns = [r[0] for r in rows]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot(ns, [r[1] for r in rows], "o-", label="p2pfed (all-reduce + agreement)")
        a1.plot(ns, [r[2] for r in rows], "s--", label="gloo all_reduce")
        a1.set(title=f"Time to the average (model {rows[0][4] / 1e6:.1f} MB)", xlabel="peers N", ylabel="ms")
        a1.legend(fontsize=8)
        a2.plot(ns, [r[3] / r[4] for r in rows], "o-", label="p2pfed bytes sent per peer / model bytes")
        a2.axhline(2, color="k", ls=":", lw=1, label="2x model")
        a2.set(title="Bytes sent per peer per round", xlabel="peers N", ylabel="x model size", ylim=(0, 2.5))
        a2.legend(fontsize=8)
        fig.savefig(args.plot, dpi=100, bbox_inches="tight")
    harness.result({"n": ",".join(str(r[0]) for r in rows), "p2pfed_ms": ",".join(f"{r[1]:.1f}" for r in rows),
                    "gloo_ms": ",".join(f"{r[2]:.1f}" for r in rows),
                    "bytes_per_peer": ",".join(f"{r[3]:.0f}" for r in rows), "model_bytes": rows[0][4]})


if __name__ == "__main__":
    main()
