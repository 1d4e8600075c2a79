"""Site folders of generated photos for the own-data tests: each class a colour (so a shifted
label shows at once in the per-class accuracy), every image its own size, saved as JPEG, PNG
(with alpha), WebP or CMYK JPEG, some with an EXIF rotation."""
from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"a": (220, 30, 30), "b": (30, 200, 40), "c": (40, 60, 220), "d": (230, 220, 40), "e": (210, 40, 200),
           "f": (40, 210, 210)}


def photo(rng: np.random.Generator, colour: tuple[int, int, int], w: int, h: int) -> np.ndarray:
    """An h x w RGB image: the class colour at a random brightness, with noise and a darker blob."""
    base = np.asarray(colour, np.float32) * rng.uniform(0.75, 1.0)
    img = base + rng.normal(0, 18, (h, w, 3))
    y, x = rng.integers(0, h), rng.integers(0, w)
    img[max(0, y - h // 5):y + h // 5, max(0, x - w // 5):x + w // 5] *= 0.6
    return img.clip(0, 255).astype(np.uint8)


def save(arr: np.ndarray, path: Path, kind: int) -> Path:
    """Write arr in one of five ways (kind % 5): JPEG, PNG with alpha, WebP, CMYK JPEG, JPEG with
    EXIF orientation 6 (stored rotated; the viewer turns it upright)."""
    from PIL import Image
    im = Image.fromarray(arr)
    kind %= 5
    if kind == 0:
        path = path.with_suffix(".jpg")
        im.save(path, quality=92)
    elif kind == 1:
        path = path.with_suffix(".png")
        rgba = im.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(path)
    elif kind == 2:
        path = path.with_suffix(".webp")
        im.save(path, quality=90)
    elif kind == 3:
        path = path.with_suffix(".jpg")
        im.convert("CMYK").save(path, quality=92)
    else:
        path = path.with_suffix(".jpeg")
        exif = Image.Exif()
        exif[0x0112] = 6
        im.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)
    return path


def make_site(root: Path, classes: list[str], n_train: int, n_test: int, seed: int) -> Path:
    """root/train/<class>/* and root/test/<class>/* of generated photos (sizes 36-90 px a side)."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(36, 91)), int(rng.integers(36, 91))
                save(photo(rng, COLOURS[c], w, h), d / f"{c}{i:03d}", k)
                k += 1
    return root
