"""fp32 vs INT8 on a consensus model: size, accuracy, agreement and latency, measured side by side.

    python bench/quantize.py RUN_DIR|MODEL.pt [--threads 1] [--test-images 10000] [--calibration-images 256]

Runs p2pfed's own quantization (the same code as `p2pfed quantize`) on RUN_DIR/consensus.pt or on
a model file in that format (e.g. central.pt), writing beside it, then prints the
table, which ONNX ops remain in the INT8 model before and after ONNX Runtime's optimiser, and a
last line: RESULT int8_size_ratio=.. acc_drop_pts=.. b1_ratio=.. b64_ratio=.. agreement=..
(ratios are INT8 ONNX / fp32 ONNX, measured in the same process, one after the other).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", help="a run directory (its consensus.pt) or a model file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--calibration-images", type=int, default=256)
    args = ap.parse_args()
    import numpy as np
    import torch
    from p2pfed import data, export, logs, quantize
    logs.setup("bench")
    model_file = quantize.model_file_of(args.target)
    _, meta = export.load_consensus(model_file)
    cfg = export.config_of(meta)
    torch.set_num_threads(args.threads)
    cal_split = quantize.writer_partition(meta, cfg)
    cal = data.normalize(cal_split.subset(np.arange(min(args.calibration_images, len(cal_split)))).images,
                         cfg.model.input_size)
    test = data.load_split(cfg.data, "test")
    idx = np.sort(np.random.default_rng(cfg.data.seed + 11).permutation(len(test))[:args.test_images])
    sub = test.subset(idx)
    res = quantize.compare(model_file, model_file.parent, cal, data.normalize(sub.images, cfg.model.input_size),
                           sub.labels, threads=args.threads)
    print(quantize.format_table(res))
    print("ops in the INT8 file:", res["int8_onnx_ops"])
    print("ops ONNX Runtime runs (int8):", res["int8_onnx_runtime_ops"])
    print("ops ONNX Runtime runs (fp32):", quantize.runtime_ops(model_file.with_suffix(".onnx"), args.threads))
    r = res["rows"]
    f, q = r["fp32 onnx"], r["int8 onnx static"]
    print(f"RESULT int8_size_ratio={q['bytes'] / f['bytes']:.3f} acc_drop_pts={100 * (f['accuracy'] - q['accuracy']):.2f} "
          f"b1_ratio={q['latency_ms_b1'] / f['latency_ms_b1']:.2f} b64_ratio={q['latency_ms_b64'] / f['latency_ms_b64']:.2f} "
          f"agreement={q['agreement_with_fp32']:.3f} fp32_acc={f['accuracy']:.4f} threads={args.threads}")


if __name__ == "__main__":
    main()
