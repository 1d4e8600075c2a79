"""Outputs: files a run leaves behind. May use learning (to rebuild a model); no sockets.

    atomic.py      atomic file writes (temporary, fsync, rename) and stale-temporary sweeping
    checkpoint.py  the consensus.pt and checkpoint formats
    metrics.py     per-peer JSON-lines metrics, and the one reader of JSON-lines files
    tensorboard_sink.py  metrics records as TensorBoard scalars
    prometheus_sink.py   metrics records as Prometheus metrics
    logs.py        logging with the peer id and round in every record
    summary.py     summary.json from the peers' reports
    plots.py       the run's plots
    report.py      summary.md and `p2pfed status`
    export.py      consensus.pt -> fp32 ONNX, checked against PyTorch, with its metadata (classes, size, resize)
    predict.py     `p2pfed predict`: photos classified by ONNX Runtime alone, from the model's metadata
    quantize.py    static INT8 models (ONNX Runtime QDQ, torch FX, the dynamic baseline)
    comparison.py  the fp32-vs-INT8 comparison and `p2pfed quantize`
"""
