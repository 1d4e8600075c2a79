"""Static INT8 post-training quantization and the fp32-vs-INT8 comparison.

Rows of the comparison (RUN_DIR/quantization.json):
    fp32 torch            the consensus model
    fp32 onnx             export.py's model in ONNX Runtime
    int8 onnx static      ORT pre-processing (shape inference, Conv+BN fusion), quantize_static in QDQ
                          format, per-channel int8 weights, uint8 activations (U8S8: the VNNI fast path)
    int8 torch static     FX graph mode PTQ, x86 backend (deprecated in torch, still present in 2.14)
    int8 dynamic          the old notebook's method: quantize_dynamic, which only touches nn.Linear
Calibration uses images from the quantizing peer's own partition.
"""
from __future__ import annotations

import io
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import atomic, data, export

log = logging.getLogger("p2pfed.quantize")

LATENCY_REPEATS = {1: 50, 64: 10}


class QuantizeError(RuntimeError):
    """Quantization cannot run; the message says why and what to do."""


class _Calibration:
    """onnxruntime CalibrationDataReader over a tensor of normalised images."""
    def __init__(self, images: torch.Tensor, batch: int = 32):
        self.batches = [images[i:i + batch].numpy() for i in range(0, len(images), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {"input": self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize_onnx_static(fp32_path: Path, out: Path, calibration: torch.Tensor) -> Path:
    """fp32 ONNX -> pre-processed -> static QDQ INT8 -> compacted, written atomically to out."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    prep = atomic.temp_path(out.with_name(out.stem + ".prep.onnx"))
    tmp = atomic.temp_path(out)
    try:
        started = time.monotonic()
        log.info("INT8: pre-processing %s (shape inference, Conv+BN fusion)", fp32_path.name)
        quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
        log.info("INT8: calibrating on %d images in %d batches, then quantizing", len(calibration),
                 (len(calibration) + 31) // 32)
        quantize_qdq(prep, tmp, calibration)
        model = onnx.load(str(tmp))
        before = model.ByteSize()
        compact_qdq(model)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        atomic.publish(tmp, out)
        log.info("INT8: wrote %s (%d bytes; %d before compaction) in %.1f s", out.name, out.stat().st_size,
                 before, time.monotonic() - started)
    finally:
        prep.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return out


def quantize_qdq(prepared: Path, out: Path, calibration: torch.Tensor) -> None:
    """quantize_static in QDQ format: per-channel symmetric int8 weights, uint8 activations (U8S8,
    the combination ONNX Runtime's x86 kernels run on the VNNI path), MinMax calibration.
    QuantizeBias=False keeps conv biases as fp32 (4 bytes/channel) instead of int32 + a scale + a
    zero point (12 bytes/channel); ONNX Runtime quantizes them to int32 itself, with the same formula
    (bias / (input_scale * weight_scale)), when it fuses QLinearConv at session start."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    quantize_static(str(prepared), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"QuantizeBias": False})


def compact_qdq(model) -> None:
    """Drop what the QDQ file carries but does not need, in place. Semantics are unchanged:
    - all-zero int8 zero points of the per-channel conv weights (symmetric: 0 is the default);
    - value_info (intermediate shapes; ONNX Runtime infers them again);
    - long tensor and node names: the exporter's paths ("/features/features.1/conv/...") cost about
      as much as all biases. Tensors get short hex names; the graph's input and output keep theirs.
    Gemm weights keep their zero point: ONNX Runtime only fuses QGemm with one present."""
    from onnx import TensorProto, numpy_helper
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, set[str]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    for n in g.node:
        if (n.op_type == "DequantizeLinear" and len(n.input) == 3 and n.input[0] in inits
                and n.input[2] in inits and inits[n.input[0]].data_type == TensorProto.INT8
                and consumers.get(n.output[0]) == {"Conv"} and not numpy_helper.to_array(inits[n.input[2]]).any()):
            del n.input[2]
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, format(len(names), "x"))
    for t in g.initializer:
        t.name = short(t.name)
    for n in g.node:
        n.name = ""
        n.doc_string = ""
        n.input[:] = [short(i) for i in n.input]
        n.output[:] = [short(o) for o in n.output]


def runtime_ops(path: Path, threads: int = 1) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs, after its fusions (level EXTENDED: the
    QDQ -> QLinear* fusions, without the hardware-specific layout changes of level ALL)."""
    import collections
    import tempfile
    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node))


def quantize_torch_fx(net: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module | None:
    """FX static PTQ (x86). Returns None if this torch no longer has it."""
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError:
        log.warning("torch.ao.quantization.quantize_fx is not in this torch; skipping the torch INT8 row")
        return None
    import copy
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(net).eval(), get_default_qconfig_mapping("x86"),
                              example_inputs=(calibration[:1],))
        with torch.no_grad():
            for i in range(0, len(calibration), 32):
                prepared(calibration[i:i + 32])
        return convert_fx(prepared)


def quantize_dynamic(net: torch.nn.Module) -> torch.nn.Module:
    import copy
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(net).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def torch_file_bytes(net: torch.nn.Module, path: Path) -> int:
    """Size on disk of the module's state_dict as torch.save writes it."""
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    atomic.write_bytes(path, buf.getvalue())
    return path.stat().st_size


def _median_ms(fn, x, repeats: int) -> float:
    fn(x)                                           # warm-up
    fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def evaluate_rows(rows: dict, images: torch.Tensor, labels: np.ndarray, threads: int) -> dict:
    """rows: name -> callable(np/tensor batch) -> logits ndarray. Adds accuracy, agreement, latency."""
    preds = {}
    for name, fn in rows.items():
        out = [np.asarray(fn(images[i:i + 256])) for i in range(0, len(images), 256)]
        preds[name] = np.concatenate(out).argmax(1)
    base = preds["fp32 torch"]
    result = {}
    for name, fn in rows.items():
        result[name] = {
            "accuracy": float((preds[name] == labels).mean()),
            "agreement_with_fp32": float((preds[name] == base).mean()),
            "latency_ms_b1": _median_ms(fn, images[:1], LATENCY_REPEATS[1]),
            "latency_ms_b64": _median_ms(fn, images[:64], LATENCY_REPEATS[64]),
        }
    return result


def _torch_fn(net):
    def run(x):
        with torch.no_grad():
            return net(x).numpy()
    return run


def _ort_fn(sess):
    return lambda x: sess.run(None, {"input": x.numpy()})[0]


def compare(model_file: Path, out_dir: Path, calibration: torch.Tensor, test_images: torch.Tensor,
            test_labels: np.ndarray, threads: int = 1) -> dict:
    """Build every row's model, measure it, and return the comparison document.
    Writes out_dir/STEM.onnx and STEM.int8.onnx, STEM being model_file's (consensus for consensus.pt)."""
    torch.set_num_threads(threads)
    net, meta = export.load_consensus(model_file)
    stem = Path(model_file).stem
    fp32_onnx = export.export_onnx(net, out_dir / f"{stem}.onnx", meta["model_args"]["input_size"])
    int8_onnx = quantize_onnx_static(fp32_onnx, out_dir / f"{stem}.int8.onnx", calibration)
    fx = quantize_torch_fx(net, calibration)
    dyn = quantize_dynamic(net)
    qdir = out_dir / "quantized"
    sizes = {"fp32 torch": torch_file_bytes(net, qdir / "fp32.pt"),
             "fp32 onnx": fp32_onnx.stat().st_size,
             "int8 onnx static": int8_onnx.stat().st_size,
             "int8 dynamic (baseline)": torch_file_bytes(dyn, qdir / "int8-dynamic.pt")}
    rows = {"fp32 torch": _torch_fn(net),
            "fp32 onnx": _ort_fn(export.ort_session(fp32_onnx, threads)),
            "int8 onnx static": _ort_fn(export.ort_session(int8_onnx, threads)),
            "int8 dynamic (baseline)": _torch_fn(dyn)}
    if fx is not None:
        sizes["int8 torch static"] = torch_file_bytes(fx, qdir / "int8-fx.pt")
        rows["int8 torch static"] = _torch_fn(fx)
    measured = evaluate_rows(rows, test_images, test_labels, threads)
    for name in measured:
        measured[name]["bytes"] = sizes[name]
        measured[name]["size_vs_fp32"] = sizes[name] / sizes["fp32 onnx" if "onnx" in name else "fp32 torch"]
    import onnx
    ops = sorted({n.op_type for n in onnx.load(str(int8_onnx)).graph.node})
    return {"rows": measured, "threads": threads, "calibration_images": len(calibration),
            "test_images": len(test_images), "int8_onnx_ops": ops,
            "int8_onnx_runtime_ops": runtime_ops(int8_onnx, threads),
            "order": ["fp32 torch", "fp32 onnx", "int8 onnx static", "int8 torch static", "int8 dynamic (baseline)"]}


def calibration_batch(split: data.Split, n: int, input_size: int, seed: int = 0) -> torch.Tensor:
    """A fixed random sample of n images of split (at most all of them), normalized for the model."""
    return data.normalize(data.spread_sample(split, n, seed + 12).images, input_size)


def run(run_dir: Path, calibration: data.Split, cfg, n_test: int = 10000, model_file: Path | None = None,
        threads: int | None = None) -> dict:
    """At the end of a run (any peer): calibrate on my partition, compare, write quantization.json
    (STEM.quantization.json for a model file other than consensus.pt). threads: cfg.train.threads or 1."""
    model_file = model_file or run_dir / "consensus.pt"
    cal = calibration_batch(calibration, cfg.output.calibration_images, cfg.model.input_size, cfg.data.seed)
    sub = data.spread_sample(data.load_split(cfg.data, "test"), n_test, cfg.data.seed + 11)
    result = compare(model_file, run_dir, cal, data.normalize(sub.images, cfg.model.input_size),
                     sub.labels, threads=threads or max(1, cfg.train.threads or 1))
    name = "quantization.json" if model_file.stem == "consensus" else f"{model_file.stem}.quantization.json"
    atomic.write_text(run_dir / name, json.dumps(result, indent=2) + "\n")
    log.info("quantization:\n%s", format_table(result))
    return result


def model_file_of(target: str | Path) -> Path:
    """RUN_DIR means RUN_DIR/consensus.pt; anything else is taken as a model file in that format."""
    path = Path(target)
    return path / "consensus.pt" if path.is_dir() else path


def writer_partition(meta: dict, cfg) -> data.Split:
    """The training partition of the peer that wrote the model (the first peer's if unknown)."""
    writer = meta.get("written_by", -1)
    ids = sorted(p["id"] for p in meta["config"]["peers"]) or [0]
    split, _, _ = data.peer_partition(cfg.data, ids.index(writer) if writer in ids else 0, len(ids))
    return split


def run_target(target: str | Path, calibration_images: int | None = None, n_test: int = 10000,
               threads: int | None = None) -> dict:
    """`p2pfed quantize RUN_DIR|consensus.pt`: calibrate on the writer's partition from the run's config."""
    path = model_file_of(target)
    _, meta = export.load_consensus(path)
    cfg = export.config_of(meta)
    if calibration_images:
        from . import config as config_mod
        cfg = config_mod.override(cfg, output={"calibration_images": calibration_images})
    return run(path.parent, writer_partition(meta, cfg), cfg, n_test=n_test, model_file=path, threads=threads)


def format_table(result: dict) -> str:
    head = f"{'model':<26}{'accuracy':>9}{'agree':>8}{'bytes':>11}{'size':>7}{'b1 ms':>8}{'b64 ms':>9}"
    lines = [head, "-" * len(head)]
    for name in result["order"]:
        r = result["rows"].get(name)
        if r is None:
            lines.append(f"{name:<26}  (not available in this torch)")
            continue
        lines.append(f"{name:<26}{100 * r['accuracy']:>8.2f}%{100 * r['agreement_with_fp32']:>7.1f}%"
                     f"{r['bytes']:>11,}{r['size_vs_fp32']:>6.2f}x{r['latency_ms_b1']:>8.2f}{r['latency_ms_b64']:>9.1f}")
    return "\n".join(lines)
