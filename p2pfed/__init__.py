"""p2pfed: serverless federated learning. Each peer is an OS process; peers average their
MobileNetV2 state_dicts directly over ZeroMQ until every live peer holds the same model.

Map of concepts to modules:

    config.py      peers.toml -> frozen dataclasses; unknown keys rejected by name
    data.py        CIFAR-10, image folders (.tar.xz too), synthetic data; iid/dirichlet partitions
    model.py       MobileNetV2 build, local training, evaluation, LR schedule
    averaging.py   pure maths: flatten, shards, weighted mean, integer-buffer rule, digest
    wire.py        messages: msgpack header + raw buffers; validation of untrusted frames
    transport.py   ZeroMQ sockets in one network thread: heartbeats, liveness, fetch answers
    security.py    CURVE keys and the allow-list authenticator
    allreduce.py   one round: group, butterfly all-reduce, digest agreement, abort/retry
    peer.py        the per-peer state machine: sync, train, average, commit, eval, report
    faults.py      fault injection (crash or stall at train / exchange / between-rounds)
    atomic.py      atomic file writes
    metrics.py     per-peer JSON-lines metrics
    summary.py     summary.json from the peers' reports
    launcher.py    `python launch.py`: N local peers, live progress, restart, cleanup
    centralized.py the single-process reference run
    export.py      consensus.pt -> ONNX (checked against PyTorch)
    quantize.py    static INT8 (ONNX Runtime QDQ, torch FX) and the comparison
    report.py      plots + summary.md; `p2pfed status`
    cli.py         the `p2pfed` click commands
"""
__version__ = "0.1.0"
