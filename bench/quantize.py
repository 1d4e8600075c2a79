"""fp32 vs INT8 on a consensus model: size, accuracy, agreement and latency, measured side by side.

    python -m bench.quantize RUN_DIR|MODEL.pt [--threads 1] [--test-images 10000] [--calibration-images 256]

Runs `p2pfed quantize` (the same function) on RUN_DIR/consensus.pt or on a model file in that
format (e.g. central.pt), writing its files and quantization.json beside it, then prints the
table, which ONNX ops remain in the INT8 model before and after ONNX Runtime's optimiser, and a
last line: RESULT int8_size_ratio=.. acc_drop_pts=.. b1_ratio=.. b64_ratio=.. agreement=..
(ratios are INT8 ONNX / fp32 ONNX, measured in the same process, one after the other).
"""
from __future__ import annotations

from bench import harness


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("target", help="a run directory (its consensus.pt) or a model file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--calibration-images", type=int, default=256)
    args = ap.parse_args()
    from p2pfed.outputs import comparison, logs, quantize
    logs.setup("bench")
    res = comparison.run_target(args.target, calibration_images=args.calibration_images,
                              n_test=args.test_images, threads=args.threads)
    print(comparison.format_table(res))
    print("ops in the INT8 file:", res["int8_onnx_ops"])
    print("ops ONNX Runtime runs (int8):", res["int8_onnx_runtime_ops"])
    print("ops ONNX Runtime runs (fp32):", quantize.runtime_ops(comparison.model_file_of(args.target).with_suffix(".onnx"), args.threads))
    r = res["rows"]
    f, q = r["fp32 onnx"], r["int8 onnx static"]
    harness.result({"int8_size_ratio": f"{q['bytes'] / f['bytes']:.3f}",
                    "acc_drop_pts": f"{100 * (f['accuracy'] - q['accuracy']):.2f}",
                    "b1_ratio": f"{q['latency_ms_b1'] / f['latency_ms_b1']:.2f}",
                    "b64_ratio": f"{q['latency_ms_b64'] / f['latency_ms_b64']:.2f}",
                    "agreement": f"{q['agreement_with_fp32']:.3f}", "fp32_acc": f"{f['accuracy']:.4f}",
                    "threads": args.threads})


if __name__ == "__main__":
    main()
