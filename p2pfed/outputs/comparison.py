"""The fp32-vs-INT8 comparison (RUN_DIR/quantization.json) and the `p2pfed quantize` command.

Rows:
    fp32 torch            the consensus model
    fp32 onnx             export.py's model in ONNX Runtime
    int8 onnx static      quantize.quantize_onnx_static
    int8 torch static     quantize.quantize_torch_fx
    int8 dynamic          quantize.quantize_dynamic (the old notebook's method)
Each row: accuracy on the test images, agreement with fp32, bytes on disk, latency at batch 1
and 64. Calibration uses images from the quantizing peer's own partition.
"""
from __future__ import annotations

import io
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .. import config as config_mod
from ..learning import augment, datasets, folders
from . import atomic, export
from .quantize import quantize_dynamic, quantize_onnx_static, quantize_torch_fx, runtime_ops

log = logging.getLogger("p2pfed.outputs.comparison")

LATENCY_REPEATS = {1: 50, 64: 10}


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
    props = export.metadata(meta)
    fp32_onnx = export.export_onnx(net, out_dir / f"{stem}.onnx", meta["model_args"]["input_size"], props)
    int8_onnx = quantize_onnx_static(fp32_onnx, out_dir / f"{stem}.int8.onnx", calibration, props)
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


def calibration_batch(split: datasets.Split, n: int, input_size: int, seed: int = 0) -> torch.Tensor:
    """A fixed random sample of n images of split (at most all of them), normalized for the model."""
    return augment.normalize(datasets.spread_sample(split, n, seed + 12).images, input_size)


def run(run_dir: Path, calibration: datasets.Split, cfg, n_test: int = 10000, model_file: Path | None = None,
        threads: int | None = None, writer: int = -1) -> dict:
    """At the end of a run (any peer): calibrate on my partition, compare, write quantization.json
    (STEM.quantization.json for a model file other than consensus.pt). threads: cfg.train.threads or 1.
    writer: the peer whose own test folder measures the models (data.partition = "own")."""
    model_file = model_file or run_dir / "consensus.pt"
    cal = calibration_batch(calibration, cfg.output.calibration_images, cfg.model.input_size, cfg.data.seed)
    own = export.writer_dir(cfg, writer) if cfg.data.partition == "own" else ""
    try:
        test = datasets.load_split(cfg.data, "test", cfg.model.input_size, own)
    except folders.MissingSplit:
        log.warning("%s has no test/ folder: the fp32 and INT8 models are compared on training photos of this "
                    "site instead (an agreement check, not a held-out accuracy)", own)
        test = calibration
    sub = datasets.spread_sample(test, n_test, cfg.data.seed + 11)
    result = compare(model_file, run_dir, cal, augment.normalize(sub.images, cfg.model.input_size),
                     sub.labels, threads=threads or max(1, cfg.train.threads or 1))
    name = "quantization.json" if model_file.stem == "consensus" else f"{model_file.stem}.quantization.json"
    atomic.write_text(run_dir / name, json.dumps(result, indent=2) + "\n")
    log.info("quantization:\n%s", format_table(result))
    return result


def model_file_of(target: str | Path) -> Path:
    """RUN_DIR means RUN_DIR/consensus.pt; anything else is taken as a model file in that format."""
    path = Path(target)
    return path / "consensus.pt" if path.is_dir() else path


def writer_partition(meta: dict, cfg) -> datasets.Split:
    """The training partition of the peer that wrote the model (the first peer's if unknown)."""
    writer = meta.get("written_by", -1)
    ids = sorted(p["id"] for p in meta["config"]["peers"]) or [0]
    split, _, _ = datasets.peer_partition(cfg.data, ids.index(writer) if writer in ids else 0, len(ids),
                                          cfg.model.input_size, export.writer_dir(cfg, writer))
    return split


def run_target(target: str | Path, calibration_images: int | None = None, n_test: int = 10000,
               threads: int | None = None) -> dict:
    """`p2pfed quantize RUN_DIR|consensus.pt`: calibrate on the writer's partition from the run's config."""
    path = model_file_of(target)
    _, meta = export.load_consensus(path)
    cfg = export.config_of(meta)
    if calibration_images:
        cfg = config_mod.override(cfg, output={"calibration_images": calibration_images})
    return run(path.parent, writer_partition(meta, cfg), cfg, n_test=n_test, model_file=path, threads=threads,
               writer=meta.get("written_by", -1))


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
