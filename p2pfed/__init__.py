"""p2pfed: serverless federated learning. Each peer is an OS process; peers average their
MobileNetV2 state_dicts directly over ZeroMQ until every live peer holds the same model.

Five layers, top to bottom, and the simulator beside outputs (import-linter contracts in
setup.cfg keep them honest):

    run/        a peer, the launcher, the CLI: wires the layers below together
    outputs/    files a run leaves: checkpoints, metrics, logs, summary, report, ONNX, INT8
    sim/        the deterministic simulator: consensus/ unchanged on a virtual clock (no torch, no sockets)
    learning/   data, partitions, the model, local training (torch)       } independent of
    consensus/  how peers agree on a round state (numpy, no torch)        } each other
    net/        wire format and sockets (ZeroMQ, msgpack, CURVE)

    config/     peers.toml as frozen dataclasses: the shared vocabulary, imports nothing of p2pfed

outputs may use learning; sim and consensus may use net; learning and outputs know nothing of the
network, consensus and net know nothing of torch. Each package's docstring maps its modules.
"""
__version__ = "0.2.0"
