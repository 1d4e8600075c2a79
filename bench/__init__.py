"""Benchmarks: each module a script, run from the repository root as `python -m bench.NAME`
(see its docstring), ending with one `RESULT key=value ...` line. docs/benchmarks.md has the figures.

    harness.py            what the benches share: flags, runs (timed, checked, read), workers, the RESULT line
    averaging.py          N processes to the agreed average: p2pfed's all-reduce against gloo all_reduce
    scale.py              averaging time and bytes per peer against N (averaging.py's workers)
    secagg.py             secure aggregation's cost per round, and where its time goes
    syncbn_cost.py        synchronized BatchNorm's cost per training step
    train_throughput.py   the training loop's img/s: variants and thread layouts, against the machine's peak
    device_throughput.py  training img/s on each device (cpu, cuda), side by side
    sync_overhead.py      a peer's wall time not spent training, at several round sizes k
    fed_vs_central.py     federated (IID, Dirichlet) against centralized training at equal epochs
    noniid.py             training modes on label-skewed partitions, with the centralized reference
    recipes.py            federated recipes side by side (outer momentum, averaged optimizer state, SCAFFOLD)
    time_to_accuracy.py   accuracy against wall time: the default run, candidate recipes, the centralized run
    stragglers.py         one slow peer against none
    recovery.py           survivors going on without dead peers; dead peers restarting by themselves
    regression.py         this checkout against an earlier commit, the same small run alternating
    own_data.py           sites that bring their own photos, against one process on their union; the photo loader
    wan.py                the small run over shaped and delayed links between network namespaces (root)
    netns.py              hosts on one machine: network namespaces, a bridge, links to cut, shape and delay
    relay.py              a TCP relay adding a one-way delay (netns.py runs it in each host)
    quantize.py           fp32 against INT8 on a consensus model: size, accuracy, agreement, latency
    quantize_variants.py  INT8 quantization variants and ONNX Runtime optimisation levels against fp32
    simulate.py           the deterministic simulator at scale: faulty seeds, broken protocols, large groups

    gpu_check.sh          a GPU machine's check: gpu tests, 5 peers on one device, device_throughput
    long_rounds.sh        long rounds with outer momentum (k = 16, 64, 256) against the default recipe
"""
