"""`p2pfed predict MODEL IMAGE...`: classify photos with an exported ONNX model and ONNX Runtime
alone (no torch), from what the model's own metadata says: its class names in output order, its
input size, the pixel normalisation and the resize rule (export.metadata). It is also the
reference for anyone who deploys the model without p2pfed: the same steps in any language.

    1. decode the image, apply its EXIF orientation, composite transparency on white, convert to RGB
    2. resize the shorter side to input_size (bilinear, antialiased), then crop the centre square
    3. float32 NCHW, (pixel / 255 - mean) / std per channel
    4. softmax over the logits
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class PredictError(RuntimeError):
    """The model or an image cannot be used; the message names it and what to do."""


def model_path(target: str | os.PathLike) -> Path:
    """A .onnx file, or a run directory (its consensus.onnx)."""
    path = Path(target)
    if path.is_dir():
        path = path / "consensus.onnx"
    if not path.is_file():
        raise PredictError(f"{path} does not exist; pass an .onnx file written by a run with --quantize "
                           f"(RUN_DIR/consensus.onnx or consensus.int8.onnx) or by `p2pfed export`")
    return path


def load(target: str | os.PathLike):
    """(ONNX Runtime session, its p2pfed metadata: classes, input_size, mean, std)."""
    import onnxruntime as ort
    path = model_path(target)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PredictError(f"{path} is not a model ONNX Runtime can load ({type(e).__name__}: {str(e)[:120]})") from None
    props = sess.get_modelmeta().custom_metadata_map
    try:
        meta = {"classes": json.loads(props["p2pfed.classes"]), "input_size": int(props["p2pfed.input_size"]),
                "mean": np.asarray(json.loads(props["p2pfed.mean"]), np.float32),
                "std": np.asarray(json.loads(props["p2pfed.std"]), np.float32)}
    except (KeyError, ValueError) as e:
        raise PredictError(f"{path} carries no p2pfed metadata ({e}); export it again with `p2pfed export` "
                           f"from its consensus.pt") from None
    return sess, meta


def preprocess(image_path: str | os.PathLike, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """One photo as the model's input, (3, size, size) float32, by the steps in the module doc."""
    from PIL import Image, ImageOps
    try:
        with Image.open(image_path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            im = im.convert("RGB")
    except MemoryError:
        raise
    except Exception as e:      # whatever Pillow raises for a file that is not a readable image
        raise PredictError(f"cannot read image {image_path}: {type(e).__name__}: {str(e)[:200]}") from None
    w, h = im.size
    if (w, h) != (size, size):
        # the shorter side to size, the longer in proportion (as torchvision's resize computes it)
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float32) / 255.0
    return ((x - mean) / std).transpose(2, 0, 1)


def predict(target: str | os.PathLike, images: list[str], top: int = 3) -> list[dict]:
    """For each image: its top classes with their probabilities."""
    sess, meta = load(target)
    out = []
    for path in images:
        x = preprocess(path, meta["input_size"], meta["mean"], meta["std"])[None]
        logits = sess.run(None, {sess.get_inputs()[0].name: x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = np.argsort(-p)[:top]
        out.append({"image": str(path), "top": [(meta["classes"][i], float(p[i])) for i in best],
                    "logits": logits.tolist()})
    return out
