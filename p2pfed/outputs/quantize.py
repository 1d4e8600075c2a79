"""Static INT8 post-training quantization: the models the comparison (comparison.py) measures.

    int8 onnx static      ORT pre-processing (shape inference, Conv+BN fusion), quantize_static in QDQ
                          format, per-channel int8 weights, uint8 activations (U8S8: the VNNI fast path),
                          then compacted (compact_qdq)
    int8 torch static     FX graph mode PTQ, x86 backend (deprecated in torch, still present in 2.14)
    int8 dynamic          the old notebook's method: quantize_dynamic, which only touches nn.Linear
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from . import atomic

log = logging.getLogger("p2pfed.outputs.quantize")

class Calibration:
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


def quantize_onnx_static(fp32_path: Path, out: Path, calibration: torch.Tensor,
                         props: dict[str, str] | None = None) -> Path:
    """fp32 ONNX -> pre-processed -> static QDQ INT8 -> compacted, written atomically to out, with
    the fp32 model's metadata_props (props: export.metadata) carried over."""
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
        if props:
            from .export import set_metadata
            set_metadata(model, props)
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
    quantize_static(str(prepared), str(out), Calibration(calibration), quant_format=QuantFormat.QDQ,
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
