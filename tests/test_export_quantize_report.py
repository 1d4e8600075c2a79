"""Export, INT8 quantization and the report, on one small real run (3 peers, synthetic data)."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import FAST, make_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qrun")
    make_config(tmp, 3, model={"width_mult": 0.5}, train={"rounds": 2, "max_steps": 40, "local_epochs": 6.0},
                output={"quantize": True, "calibration_images": 128})
    cmd = [sys.executable, str(ROOT / "launch.py"), "--peers", "3", "--config", str(tmp / "peers.toml"),
           "--run-dir", str(tmp / "run"), "--kill", "2@2:exchange"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=400)
    finally:
        if p.poll() is None:
            import os, signal
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, out
    return tmp / "run"


@pytest.mark.slow          # the module's run_dir fixture runs a small federation
def test_int8_onnx_runs_is_qdq_not_convinteger_smaller_and_agrees(run_dir):
    q = json.loads((run_dir / "quantization.json").read_text())
    ops = {n.op_type for n in onnx.load(str(run_dir / "consensus.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ConvInteger" not in ops
    ran = q["int8_onnx_runtime_ops"]               # after ONNX Runtime's fusions: no fp32 conv left
    assert ran.get("QLinearConv", 0) > 20 and "Conv" not in ran and "ConvInteger" not in ran, ran
    import onnxruntime as ort
    sess = ort.InferenceSession(str(run_dir / "consensus.int8.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert y.shape == (3, 10) and np.isfinite(y).all()
    rows = q["rows"]
    fp32, int8 = rows["fp32 onnx"], rows["int8 onnx static"]
    assert int8["bytes"] < 0.45 * fp32["bytes"], (int8["bytes"], fp32["bytes"])
    assert int8["agreement_with_fp32"] > 0.8
    assert fp32["accuracy"] > 0.3                  # the model learned something, so agreement means something
    assert abs(int8["accuracy"] - fp32["accuracy"]) < 0.1
    # the notebook's dynamic method barely shrinks the model: it leaves every convolution in fp32
    assert rows["int8 dynamic (baseline)"]["size_vs_fp32"] > 0.8


@pytest.mark.slow          # the module's run_dir fixture runs a small federation
def test_export_cli_matches_pytorch_with_dynamic_batch(run_dir, tmp_path):
    out = tmp_path / "m.onnx"
    p = subprocess.run([sys.executable, "-m", "p2pfed", "export", str(run_dir / "consensus.pt"), "--onnx", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    diff = float(p.stdout.split("= ")[-1])
    assert diff < 1e-4
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        assert sess.run(None, {"input": np.zeros((b, 3, 32, 32), np.float32)})[0].shape == (b, 10)


def test_export_of_a_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a model")
    p = subprocess.run([sys.executable, "-m", "p2pfed", "export", str(bad)], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "not a readable consensus file" in p.stderr


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow          # the module's run_dir fixture runs a small federation
def test_report_renders_every_plot_with_expected_series(run_dir):
    md = (run_dir / "summary.md").read_text()       # launch.py rendered it at the end
    for name in ["loss", "accuracy", "averaging", "sizes", "quant_accuracy", "timeline"]:
        png = run_dir / "plots" / f"{name}.png"
        w, h = _png_size(png)
        assert 400 < w < 3000 and 200 < h < 3000 and png.stat().st_size > 8000, (name, w, h)
        assert f"plots/{name}.png" in md
    drawn = json.loads((run_dir / "plots" / "data.json").read_text())
    assert drawn["loss"]["peers"] == [0, 1, 2] and drawn["loss"]["points"]["0"] == 80   # 2 rounds x 40 steps
    assert len(drawn["accuracy"]["epochs"]) == 2 and len(drawn["accuracy"]["minutes"]) == 2
    assert drawn["averaging"]["rounds"] == 2 and drawn["averaging"]["sync_s_median"] > 0
    assert drawn["timeline"]["peers"] == [0, 1, 2] and [f[0] for f in drawn["timeline"]["faults"]] == [2]
    assert "int8 onnx static" in drawn["sizes"]["names"]
    counts = drawn["partition"]["counts"]                     # every training image on exactly one peer, by class
    assert sorted(counts) == ["0", "1", "2"] and all(len(c) == 10 for c in counts.values())
    assert sum(map(sum, counts.values())) == FAST["data"]["synthetic_train"]
    assert "## Data partition" in (run_dir / "summary.md").read_text()
    assert "peer 2 crash at exchange of round 2" in md and "agreed in every round" in md
    assert "round 2 went on without peers [2]" in md
    assert "## Accuracy by epoch" in md
    # round 2 lost a peer, so it must be listed; on a loaded machine round 1 may also have retried an
    # attempt (a slow peer), so the expected list comes from summary.json, not from a fixed string
    rounds = json.loads((run_dir / "summary.json").read_text())["rounds"]
    retried = [r["round"] for r in rounds if r["attempts"] > 1 or r["events"]]
    assert retried in ([2], [1, 2]), rounds
    listed = "2" if retried == [2] else "1-2"
    assert f"Rounds with retried attempts or events: {listed}." in md, (retried, md)


@pytest.mark.slow          # the module's run_dir fixture runs a small federation
def test_status_reads_a_finished_run(run_dir):
    p = subprocess.run([sys.executable, "-m", "p2pfed", "status", str(run_dir)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0
    assert "finished: 2 rounds" in p.stdout and "digests agreed: True" in p.stdout
    assert "peer 2:" in p.stdout and "1 injected fault" in p.stdout
