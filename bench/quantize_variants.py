"""Why a default QDQ model is barely faster than fp32, and what closes the gap.

    python -m bench.quantize_variants RUN_DIR|MODEL.pt [--threads 1] [--calibration-images 128] [--passes 3]

Quantizes RUN_DIR/consensus.onnx, or MODEL.onnx beside MODEL.pt (written by `p2pfed quantize` or
`python -m bench.quantize`), several ways
and runs each in ONNX Runtime beside the fp32 model, in this process, round-robin:
    variant   what differs
    default   quantize_static's defaults: QDQ, int8 activations and weights (S8S8), per-tensor
    s8s8-pc   int8 activations, per-channel weights
    u8s8-pt   uint8 activations, int8 weights, per-tensor
    u8s8-pc   uint8 activations, int8 per-channel weights, without quant_pre_process
    p2pfed    what `p2pfed quantize` writes: pre-processed, u8s8 per-channel, fp32 biases, compacted
and p2pfed's model again at each ONNX Runtime graph optimisation level. For each: the bytes, the
latency at batch 1 and 64 over fp32 ONNX (level ALL), and the ops ONNX Runtime actually runs.
Last line: RESULT default_b64=.. default_b1=.. p2pfed_b64=.. p2pfed_b1=.. p2pfed_noopt_b64=.. (ratios to fp32).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import harness


def quantize_variant(prep: Path, src: Path, out: Path, cal, variant: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from p2pfed.outputs import quantize
    reader = quantize.Calibration(cal)
    if variant == "default":
        quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ)
        return
    act = QuantType.QInt8 if variant.startswith("s8s8") else QuantType.QUInt8
    quantize_static(str(prep if variant != "u8s8-pc" else src), str(out), reader, quant_format=QuantFormat.QDQ,
                    per_channel=variant.endswith("-pc"), activation_type=act, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def session(path: Path, threads: int, level: str = "ALL"):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def runtime_ops(path: Path, threads: int, level: str) -> dict:
    import collections

    import onnx
    with tempfile.TemporaryDirectory() as tmp:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
        so.optimized_model_filepath = str(Path(tmp) / "o.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node))


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("target", help="a run directory (its consensus.pt) or a model file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration-images", type=int, default=128)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    import numpy as np
    import torch
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from p2pfed.outputs import comparison, export, logs, quantize
    logs.setup("bench")
    model_file = comparison.model_file_of(args.target)
    fp32 = model_file.with_suffix(".onnx")
    if not fp32.exists():
        sys.exit(f"{fp32} is missing: run `p2pfed quantize {args.target}` (or python -m bench.quantize) first")
    _, meta = export.load_consensus(model_file)
    cfg = export.config_of(meta)
    torch.set_num_threads(args.threads)
    split = comparison.writer_partition(meta, cfg)
    cal = comparison.calibration_batch(split, args.calibration_images, cfg.model.input_size)
    tmp = Path(tempfile.mkdtemp(prefix="p2pfed-qvariants-"))
    prep = tmp / "prep.onnx"
    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    files = {"fp32": fp32}
    for v in ["default", "s8s8-pc", "u8s8-pt", "u8s8-pc"]:
        files[v] = tmp / f"{v}.onnx"
        quantize_variant(prep, fp32, files[v], cal, v)
    files["p2pfed"] = quantize.quantize_onnx_static(fp32, tmp / "p2pfed.onnx", cal)
    cases = {name: (path, "ENABLE_ALL") for name, path in files.items()}
    for level, short in [("DISABLE_ALL", "none"), ("ENABLE_BASIC", "basic"), ("ENABLE_EXTENDED", "extended")]:
        cases[f"p2pfed, opt {short}"] = (files["p2pfed"], level)
    cases["fp32, opt none"] = (fp32, "DISABLE_ALL")
    sessions = {name: session(path, args.threads, level) for name, (path, level) in cases.items()}
    x = {b: cal[:b].numpy() if b <= len(cal) else np.repeat(cal.numpy(), b // len(cal) + 1, 0)[:b] for b in (1, 64)}
    repeats = {1: 40, 64: 8}
    best: dict = {}
    for _ in range(args.passes):                   # round-robin, so load on the machine hits all alike
        for name, sess in sessions.items():
            for b in (1, 64):
                sess.run(None, {"input": x[b]})
                ts = []
                for _ in range(repeats[b]):
                    t = time.perf_counter()
                    sess.run(None, {"input": x[b]})
                    ts.append(time.perf_counter() - t)
                m = statistics.median(ts)
                best[name, b] = min(best.get((name, b), m), m)
    ref = sessions["fp32"].run(None, {"input": x[64]})[0].argmax(1)
    print(f"{'variant':<22}{'bytes':>11}{'b1':>7}{'b64':>7}{'agree':>7}  ops ONNX Runtime runs")
    for name, (path, level) in cases.items():
        ops = runtime_ops(path, args.threads, level if level != "ENABLE_ALL" else "ENABLE_EXTENDED")
        agree = float((sessions[name].run(None, {"input": x[64]})[0].argmax(1) == ref).mean())
        shown = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))
        print(f"{name:<22}{path.stat().st_size:>11,}{best[name, 1] / best['fp32', 1]:>7.2f}"
              f"{best[name, 64] / best['fp32', 64]:>7.2f}{agree:>7.2f}  {shown}")
    print(f"(latency: best of {args.passes} medians, over fp32 ONNX at level ALL; {args.threads} thread(s); "
          f"fp32 b1 {1000 * best['fp32', 1]:.2f} ms, b64 {1000 * best['fp32', 64]:.1f} ms; "
          f"agree: top-1 agreement with fp32 on the 64 timing images)")
    harness.result({"default_b64": f"{best['default', 64] / best['fp32', 64]:.2f}",
                    "default_b1": f"{best['default', 1] / best['fp32', 1]:.2f}",
                    "p2pfed_b64": f"{best['p2pfed', 64] / best['fp32', 64]:.2f}",
                    "p2pfed_b1": f"{best['p2pfed', 1] / best['fp32', 1]:.2f}",
                    "p2pfed_noopt_b64": f"{best['p2pfed, opt none', 64] / best['fp32', 64]:.2f}",
                    "threads": args.threads})


if __name__ == "__main__":
    main()
