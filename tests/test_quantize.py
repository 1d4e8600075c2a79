"""The INT8 ONNX pipeline on a small MobileNetV2, in process: compaction, and what ONNX Runtime runs."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from p2pfed import config
from p2pfed.learning import model
from p2pfed.outputs import export, quantize


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    net = model.build(config.ModelConfig(width_mult=0.35), seed=0).eval()
    fp32 = export.export_onnx(net, tmp / "fp32.onnx", 32)
    cal = torch.randn(64, 3, 32, 32)
    int8 = quantize.quantize_onnx_static(fp32, tmp / "int8.onnx", cal)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    quant_pre_process(str(fp32), str(tmp / "prep.onnx"), skip_symbolic_shape=True)
    raw = tmp / "raw.onnx"                          # the same quantization, not compacted
    quantize.quantize_qdq(tmp / "prep.onnx", raw, cal)
    return {"fp32": fp32, "int8": int8, "raw": raw, "x": torch.randn(32, 3, 32, 32).numpy()}


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return export.ort_session(path).run(None, {"input": x})[0]


def test_compaction_changes_nothing_but_the_size(models):
    raw, small = models["raw"], models["int8"]
    assert np.array_equal(_run(raw, models["x"]), _run(small, models["x"]))
    assert small.stat().st_size < 0.9 * raw.stat().st_size
    g = onnx.load(str(small)).graph
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["logits"]
    inits = {t.name for t in g.initializer}
    conv_weight_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                      and len(onnx.numpy_helper.to_array(next(t for t in g.initializer if t.name == n.input[0])).shape) == 4]
    assert conv_weight_dq and all(len(n.input) == 2 for n in conv_weight_dq)   # zero points dropped
    assert max(len(t.name) for t in g.initializer) <= 4


def test_every_convolution_runs_as_an_integer_kernel(models):
    fp32_convs = sum(n.op_type == "Conv" for n in onnx.load(str(models["fp32"])).graph.node)
    ops = quantize.runtime_ops(models["int8"])
    assert ops.get("QLinearConv") == fp32_convs, ops
    assert "Conv" not in ops and "Gemm" not in ops and ops.get("QGemm") == 1, ops
    # one QuantizeLinear at the input, one DequantizeLinear at the logits: nothing else stays fp32
    assert ops.get("QuantizeLinear") == 1 and ops.get("DequantizeLinear") == 1, ops


def test_int8_is_about_a_quarter_and_close_to_fp32(models):
    ratio = models["int8"].stat().st_size / models["fp32"].stat().st_size
    assert ratio < 0.30, ratio
    f, q = _run(models["fp32"], models["x"]), _run(models["int8"], models["x"])
    rel = np.abs(f - q).max() / np.abs(f).max()
    assert rel < 0.05, rel
