"""Time for N peer processes to go from distinct MobileNetV2 models to the agreed average,
p2pfed's butterfly all-reduce over ZeroMQ against torch.distributed gloo all_reduce, side by side.

    python -m bench.averaging --peers 5 [--rounds 7] [--width-mult 1.0]

p2pfed time per round = ready -> commit with all peers ready together: from the moment the last
peer is ready (it broadcasts `ready`) to the moment the last peer has committed (group, scatter,
reduce, gather, digest agreement), wall clock across the processes, median over rounds. Also
printed: group -> commit alone (max over peers). gloo time = one all_reduce of the same float32
vector plus the division, after a barrier, max over ranks, median over rounds.
Last line: RESULT peers=N p2pfed_ms=.. gloo_ms=.. ratio=.. bytes_per_peer=.. model_bytes=..
"""
from __future__ import annotations

import json
import statistics
import sys
import time

from bench import harness

SKIP = 1   # rounds skipped in every median: the first includes connection warm-up


def model_state(width: float, seed: int):
    """A MobileNetV2 round state (numpy) of this width, its weights moved by a seeded draw: one per rank."""
    import torch
    from p2pfed import config
    from p2pfed.learning import model
    from p2pfed.learning.capture import to_numpy
    net = model.build(config.ModelConfig(width_mult=width), seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return to_numpy(net.state_dict())


def connect(args, secure=None):
    """One bench worker's peer on the loopback, connected to all the others: (transport, mailbox,
    AllReduce, peer ids, its state, the state's bytes). secure: a masked.Secure (bench.secagg)."""
    import logging
    import torch
    from p2pfed import config
    from p2pfed.consensus import allreduce
    from p2pfed.consensus.mailbox import Mailbox
    from p2pfed.net import protocol
    from p2pfed.net.transport import Transport
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    ports = json.loads(args.ports)
    peers = config.local_peers(len(ports), ports)
    acfg = config.AveragingConfig(heartbeat_interval_s=0.2, dead_after_s=5.0)
    state = model_state(args.width_mult, args.rank)
    model_bytes = sum(a.nbytes for a in state.values())
    t = Transport(peers[args.rank], peers, max_message_bytes=protocol.max_message_bytes(model_bytes),
                  heartbeat_interval_s=acfg.heartbeat_interval_s)
    t.start()
    mb = Mailbox(t, acfg.dead_after_s)
    ids = [p.id for p in peers]
    ar = allreduce.AllReduce(t, mb, acfg, ids, secure=secure)
    deadline = time.monotonic() + 60
    while len(mb.live(ids)) < len(peers) and time.monotonic() < deadline:
        mb.pump(0.05)
    return t, mb, ar, ids, state, model_bytes


def close_when_all_committed(t, mb, ids: list[int], rank: int, rounds: int) -> None:
    """Stay until every live peer has committed the last round (late peers may still need my
    slices; at most 60 s), then close the transport."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(mb.committed(p) < rounds for p in mb.live(ids) if p != rank):
        mb.pump(0.1)
    time.sleep(0.5)
    t.close()


def worker_p2pfed(args) -> None:
    from p2pfed.consensus import averaging
    t, mb, ar, ids, state, model_bytes = connect(args)
    times, sent, ready_at, commit_at, members = [], [], [], [], None
    import resource
    cpu0 = resource.getrusage(resource.RUSAGE_SELF); th0=time.thread_time()
    for r in range(1, args.rounds + 1):
        ready_at.append(time.time())
        res = ar.run(r, state, 1000 + args.rank, members)
        commit_at.append(time.time())
        times.append(res.averaging_s)
        sent.append(res.bytes_sent)
        state, members = res.committed.state, list(res.committed.members)
        t.set_status(committed=r)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF); th1=time.thread_time()
    print("CPU p2pfed user %.1f sys %.1f main-thread %.1f ms/round" % (1000*(cpu1.ru_utime-cpu0.ru_utime)/args.rounds, 1000*(cpu1.ru_stime-cpu0.ru_stime)/args.rounds, 1000*(th1-th0)/args.rounds), file=sys.stderr)
    close_when_all_committed(t, mb, ids, args.rank, args.rounds)
    print(json.dumps({"times": times, "bytes": sent, "ready_at": ready_at, "commit_at": commit_at,
                      "model_bytes": model_bytes,
                      "float_bytes": averaging.flatten(state).nbytes}), flush=True)


def worker_gloo(args) -> None:
    import torch
    import torch.distributed as dist
    from p2pfed.consensus import averaging
    torch.set_num_threads(1)
    flat = torch.from_numpy(averaging.flatten(model_state(args.width_mult, args.rank)))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world)
    times = []
    for _ in range(args.rounds):
        buf = flat.clone()
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        buf /= args.world
        times.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    print(json.dumps({"times": times}), flush=True)


def run(kind: str, n: int, rounds: int, width: float) -> list[dict]:
    """n workers of kind (p2pfed or gloo) averaging for `rounds` rounds: what each one reported."""
    from p2pfed.run.launch.preflight import free_ports
    ports = free_ports(n + 1)
    argvs = [["--worker", kind, "--rank", str(rank), "--world", str(n), "--rounds", str(rounds),
              "--width-mult", str(width), "--ports", json.dumps(ports[:n]), "--port", str(ports[n])]
             for rank in range(n)]
    return harness.run_workers("bench.averaging", argvs, what=f"{kind} workers", timeout_s=600)


def ready_to_commit_ms(ws: list[dict], rounds: int) -> list[float]:
    """Per round (the first SKIP skipped): ms from the last worker's ready to the last worker's
    commit, wall clock across the processes."""
    return [1000 * (max(w["commit_at"][r] for w in ws) - max(w["ready_at"][r] for w in ws))
            for r in range(SKIP, rounds)]


def slowest_ms(ws: list[dict], rounds: int) -> list[float]:
    """Per round (the first SKIP skipped): the largest of the workers' own times, in ms."""
    return [1000 * max(w["times"][r] for w in ws) for r in range(SKIP, rounds)]


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--worker", choices=["p2pfed", "gloo"])
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=0)
    ap.add_argument("--ports", default="[]")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    if args.worker == "p2pfed":
        return worker_p2pfed(args)
    if args.worker == "gloo":
        return worker_gloo(args)
    n = args.peers
    p = run("p2pfed", n, args.rounds, args.width_mult)
    g = run("gloo", n, args.rounds, args.width_mult)
    p_ms = statistics.median(ready_to_commit_ms(p, args.rounds))
    group_ms = statistics.median(slowest_ms(p, args.rounds))
    g_ms = statistics.median(slowest_ms(g, args.rounds))
    per_peer = statistics.median(w["bytes"][-1] for w in p)
    mb = p[0]["model_bytes"]
    print(f"{n} peers, model {mb / 1e6:.2f} MB ({p[0]['float_bytes'] / 1e6:.2f} MB floats), {args.rounds} rounds "
          f"(first skipped), 2 cores shared by all processes")
    print(f"p2pfed ready -> commit (all ready together):  {p_ms:.1f} ms median per round")
    print(f"p2pfed group -> commit (max over peers):      {group_ms:.1f} ms")
    print(f"torch.distributed gloo all_reduce:               {g_ms:.1f} ms median per round")
    print(f"bytes sent per peer per round: {per_peer / 1e6:.2f} MB = {per_peer / mb:.2f} x model")
    harness.result({"peers": n, "p2pfed_ms": f"{p_ms:.1f}", "group_commit_ms": f"{group_ms:.1f}",
                    "gloo_ms": f"{g_ms:.1f}", "ratio": f"{p_ms / g_ms:.2f}", "bytes_per_peer": f"{per_peer:.0f}",
                    "model_bytes": mb})


if __name__ == "__main__":
    main()
