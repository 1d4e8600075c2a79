"""consensus.pt -> fp32 ONNX (opset 17, dynamic batch), checked with onnx.checker and against PyTorch."""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import config
from ..learning import augment, datasets, model, normfree, photos
from . import atomic, checkpoint

log = logging.getLogger("p2pfed.outputs.export")

OPSET = 17
TOLERANCE = 1e-4          # max |logit difference| ONNX Runtime vs PyTorch


class ExportError(RuntimeError):
    """The model file cannot be exported; the message names the file and the fix."""


def load_consensus(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a self-describing consensus.pt (our own file, weights_only), ready
    for inference and export."""
    path = Path(path)
    if path.is_dir():
        path = path / "consensus.pt"
    try:
        ck = checkpoint.read(path, checkpoint.CONSENSUS_FORMAT)
    except checkpoint.FormatError as e:
        raise ExportError(str(e)) from None
    mcfg = config.ModelConfig(**{**ck["model_args"], "pretrained": False, "weights_file": ""})
    net = model.build(mcfg)
    net.load_state_dict(ck["state_dict"])
    # a normalization-free model: its standardized weights computed once, as plain convolutions
    return normfree.freeze(net).eval(), ck


def config_of(meta: dict) -> config.Config:
    return config.from_dict({k: v for k, v in meta["config"].items()})


def sample_images(cfg: config.Config, n: int, split: str = "test", data_dir: str | None = None,
                  writer: int = -1) -> torch.Tensor:
    """n normalised images of a split, for checks and calibration (with own data: the writer's
    folder, its training photos if it has no test folder)."""
    if data_dir is None and cfg.data.partition == "own":
        data_dir = writer_dir(cfg, writer)
    try:
        found = datasets.load_split(cfg.data, split, cfg.model.input_size, data_dir or "")
    except datasets.folders.MissingSplit:
        if split == "train":
            raise
        found = datasets.load_split(cfg.data, "train", cfg.model.input_size, data_dir or "")
    sample = datasets.spread_sample(found, n, cfg.data.seed + 11)
    return augment.normalize(sample.images, cfg.model.input_size)


def classes_of(meta: dict) -> list[str]:
    """The class names of a consensus.pt in output order: its own list, else its config's
    data.classes, else (a file written before classes were recorded) class0, class1, ..."""
    names = meta.get("classes") or meta.get("config", {}).get("data", {}).get("classes") or []
    k = int(meta["model_args"]["num_classes"])
    return [str(c) for c in names] if len(names) == k else [f"class{i}" for i in range(k)]


def metadata(meta: dict) -> dict[str, str]:
    """What the ONNX files say of their use (metadata_props), so that ONNX Runtime alone can
    classify a photo: the class names in output order, the input size, the pixel normalisation
    and the resize rule (predict.py reads them back)."""
    size = int(meta["model_args"]["input_size"])
    return {"p2pfed.classes": json.dumps(classes_of(meta)), "p2pfed.input_size": str(size),
            "p2pfed.mean": json.dumps(list(augment.CIFAR_MEAN)), "p2pfed.std": json.dumps(list(augment.CIFAR_STD)),
            "p2pfed.resize": photos.RESIZE_RULE,
            "p2pfed.input": f"float32 NCHW (batch, 3, {size}, {size}), RGB, (pixel / 255 - mean) / std per channel",
            "p2pfed.output": "logits in the order of p2pfed.classes; softmax gives probabilities",
            "p2pfed.digest": str(meta.get("digest", ""))}


def set_metadata(model, props: dict[str, str]) -> None:
    """Replace an onnx ModelProto's p2pfed.* metadata_props with props."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("p2pfed.")]
    del model.metadata_props[:]
    for key, value in keep + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def writer_dir(cfg: config.Config, writer: int) -> str:
    """The data folder of the peer that wrote a model (data.partition = "own"; the first peer's if unknown)."""
    ids = cfg.peer_ids
    pid = writer if writer in ids else (ids[0] if ids else -1)
    return (cfg.peer(pid).data_dir if pid >= 0 else "") or cfg.data.data_dir


def export_onnx(net: torch.nn.Module, out: str | os.PathLike, input_size: int,
                props: dict[str, str] | None = None) -> Path:
    """Write an fp32 ONNX model atomically; dynamic batch; onnx.checker must accept it. props:
    metadata_props to record (metadata())."""
    import onnx
    out = Path(out)
    x = torch.zeros(1, 3, input_size, input_size)
    tmp = atomic.temp_path(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter is deprecated in favour of dynamo, still works
        torch.onnx.export(net.eval(), (x,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    try:
        model_proto = onnx.load(str(tmp))
        if props:
            set_metadata(model_proto, props)
            onnx.save(model_proto, str(tmp))
        onnx.checker.check_model(model_proto)
        return atomic.publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def ort_session(path: str | os.PathLike, threads: int = 1, optimize: bool = True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def max_abs_diff(net: torch.nn.Module, onnx_path: str | os.PathLike, images: torch.Tensor) -> float:
    sess = ort_session(onnx_path)
    with torch.no_grad():
        ref = net.eval()(images).numpy()
    got = sess.run(None, {"input": images.numpy()})[0]
    return float(np.abs(ref - got).max())


def export_file(model_file: str, onnx_path: str | None = None, data_dir: str | None = None,
                check_images: int = 64) -> tuple[Path, float]:
    """The `p2pfed export` command: export, check, compare on real images. Returns (path, max diff)."""
    net, meta = load_consensus(model_file)
    src = Path(model_file)
    out = Path(onnx_path) if onnx_path else (src if src.is_dir() else src.parent) / "consensus.onnx"
    export_onnx(net, out, meta["model_args"]["input_size"], metadata(meta))
    try:
        images = sample_images(config_of(meta), check_images, data_dir=data_dir, writer=meta.get("written_by", -1))
    except datasets.DataError as e:
        raise ExportError(f"{out} was written, but the images to check it against PyTorch could not be read: {e}; "
                          f"pass --data-dir with an image folder") from None
    diff = max_abs_diff(net, out, images)
    if diff >= TOLERANCE:
        raise ExportError(f"ONNX Runtime and PyTorch disagree on {out}: max |logit difference| {diff:.2e} "
                          f">= {TOLERANCE}")
    log.info("exported %s (%d bytes); max |logit diff| vs PyTorch on %d images: %.2e", out, out.stat().st_size,
             len(images), diff)
    return out, diff
