"""What synchronized BatchNorm costs per training step, side by side in one run.

    python -m bench.syncbn_cost [--peers 5] [--steps 20] [--width-mult 1.0] [--batch 32]

N real processes, each a Transport + Mailbox on loopback, train MobileNetV2 on random images:
first `--steps` steps with each peer's own BatchNorm (today's step), then `--steps` steps with
the statistics summed over the peers in every layer (two exchanges per BatchNorm layer and step,
consensus/stepsync.py), then the same number of bare exchanges with no training (the messaging
floor), then synchronized steps whose sums travel masked (security.secure_aggregation: 128-bit
fixed point and pair masks, consensus/masked.py). Reports the median ms per step (max over peers)
of each. All processes share this machine's cores, as launch.py's peers do.
Last line: RESULT peers=.. local_ms=.. sync_ms=.. sync_vs_local=.. exchange_ms=.. exchanges_per_step=..
secure_ms=.. secure_vs_sync=..
"""
from __future__ import annotations

import json
import statistics
import time

from bench import harness


def worker(args) -> None:
    import logging

    import numpy as np
    import torch
    from torch import nn

    from p2pfed import config
    from p2pfed.consensus.exchange import Scope
    from p2pfed.consensus.mailbox import Mailbox
    from p2pfed.consensus.masked import Secure
    from p2pfed.consensus.stepsync import StepSync
    from p2pfed.net import wire
    from p2pfed.learning import model, syncbn
    from p2pfed.net.transport import Transport
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    ports = json.loads(args.ports)
    peers = config.local_peers(len(ports), ports)
    t = Transport(peers[args.rank], peers, max_message_bytes=64 << 20, heartbeat_interval_s=0.2)
    t.start()
    mb = Mailbox(t, 5.0)
    ids = [p.id for p in peers]
    deadline = time.monotonic() + 60
    while len(mb.live(ids)) < len(ids) and time.monotonic() < deadline:
        mb.pump(0.05)
    secure = Secure()                  # its mask key goes to the others as a `ready` would carry it
    t.broadcast(ids, wire.encode("ready", args.rank, round=1, n_samples=1, recipe="", mask_key=secure.key.public))
    while len(mb.mask_keys) < len(ids) - 1 and time.monotonic() < deadline:
        mb.pump(0.05)
    net = syncbn.convert(model.channels_last(model.build(config.ModelConfig(width_mult=args.width_mult))))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(args.rank)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    out = {}

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    def barrier(rnd):          # all peers start each phase together
        mb.advance(rnd)
        StepSync(t, mb, Scope(rnd, 0, tuple(ids)), 60.0)(np.zeros(1))

    for phase, rnd in (("local", 2), ("sync", 4), ("bare", 6), ("secure", 8)):
        barrier(rnd - 1)
        mb.advance(rnd)
        sums = StepSync(t, mb, Scope(rnd, 0, tuple(ids)), 60.0, secure if phase == "secure" else None)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            if phase == "local":
                step()
            elif phase in ("sync", "secure"):
                with syncbn.synced(net, lambda v: torch.from_numpy(sums(v.numpy())), 1 / len(ids)):
                    step()
            else:
                for _ in range(2 * len(syncbn.layers(net))):
                    sums(np.zeros(2 * 64 + 1))
            times.append(time.perf_counter() - t0)
        out[phase] = times
    out["exchanges_per_step"] = 2 * len(syncbn.layers(net))
    barrier(9)
    time.sleep(0.5)
    t.close()
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--ports", default="[]")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    from p2pfed.run.launch.preflight import free_ports
    ports = free_ports(args.peers)
    argvs = [["--worker", "--rank", str(r), "--ports", json.dumps(ports), "--steps", str(args.steps),
              "--width-mult", str(args.width_mult), "--batch", str(args.batch)] for r in range(args.peers)]
    outs = harness.run_workers("bench.syncbn_cost", argvs, what="workers", timeout_s=900)
    skip = 2                    # warm-up steps
    med = {ph: 1000 * statistics.median(max(o[ph][i] for o in outs) for i in range(skip, args.steps))
           for ph in ("local", "sync", "bare", "secure")}
    per = outs[0]["exchanges_per_step"]
    print(f"{args.peers} peers on this machine's cores, MobileNetV2 width {args.width_mult}, batch {args.batch} per "
          f"peer; median over {args.steps - skip} steps (max over peers)")
    print(f"a step with each peer's own BatchNorm:      {med['local']:8.1f} ms")
    print(f"a step with synchronized BatchNorm:         {med['sync']:8.1f} ms ({med['sync'] / med['local']:.2f}x)")
    print(f"{per} bare exchanges (no training):         {med['bare']:8.1f} ms = {med['bare'] / per:.2f} ms each")
    print(f"a synchronized step, sums masked (secagg):   {med['secure']:8.1f} ms ({med['secure'] / med['sync']:.2f}x "
          f"the plain synchronized step)")
    harness.result({"peers": args.peers, "local_ms": f"{med['local']:.1f}", "sync_ms": f"{med['sync']:.1f}",
                    "sync_vs_local": f"{med['sync'] / med['local']:.2f}", "exchange_ms": f"{med['bare'] / per:.2f}",
                    "exchanges_per_step": per, "secure_ms": f"{med['secure']:.1f}",
                    "secure_vs_sync": f"{med['secure'] / med['sync']:.2f}"})


if __name__ == "__main__":
    main()
