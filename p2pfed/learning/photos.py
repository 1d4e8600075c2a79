"""Real photos: any size, aspect ratio, format (JPEG, PNG, WebP, ...) and mode (grayscale, RGBA,
CMYK, EXIF-rotated), decoded while the peer trains and resized at model.input_size.

    training    a random resized crop (scale 0.25-1, aspect 3/4-4/3) and a random horizontal flip
    evaluation  the shorter side resized to input_size, then the centre input_size square

Both with torchvision's functional transforms on PIL images; the random parameters come from a
per-image seed drawn in order from the peer's own generator, so a run is reproducible whatever
thread decodes which image. Training JPEGs are decoded in draft mode (DCT scaling) at the
smallest scale that still covers what the crop needs; evaluation decodes at full scale. A file that cannot be read is skipped and reported by
name (BadImage), never fatal and never a shifted label.

Decoding runs in a few threads (Pillow releases the GIL while it decodes and resizes); at most a
couple of batches are decoded ahead, so memory does not grow with the size of the folder.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

log = logging.getLogger("p2pfed.learning.photos")

CROP_SCALE = (0.25, 1.0)            # random resized crop: the share of the image's area kept
CROP_RATIO = (3 / 4, 4 / 3)         # and the crop's aspect ratio
RESIZE_RULE = "shorter side to input_size (bilinear), then the centre input_size x input_size square"


class BadImage(Exception):
    """One image cannot be decoded; str() names the file and the reason (also .path, .why)."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:160]}"


def open_rgb(path: str, need: int = 0):
    """The image at path as an RGB PIL image, upright (EXIF orientation applied), transparency
    composited on white. need > 0: a JPEG may be decoded at a reduced scale whose shorter side
    is still >= need pixels. Raises BadImage naming the file."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:
            if need and im.format == "JPEG":
                im.draft("RGB", (need, need))
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(canvas, rgba)
            return im.convert("RGB")
    except MemoryError:
        raise
    except Exception as e:      # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, KeyError ...
        raise BadImage(path, _why(e)) from None


def header_ok(path: str) -> str:
    """'' if the file opens as an image (its header only: cheap), else the reason."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w < 1 or h < 1:
                return "an image of no pixels"
            return ""
    except MemoryError:
        raise
    except Exception as e:      # whatever a malformed header makes a Pillow plugin raise
        return _why(e)


def crop_params(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop (the Inception-style sampling, 10 tries, then the
    centre crop of the closest allowed aspect ratio)."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        h, w = height, int(round(height * CROP_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_image(path: str, size: int, seed: int) -> torch.Tensor:
    """uint8 (3, size, size): a random resized crop of the photo, flipped at random."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F
    rng = np.random.default_rng(seed)
    im = open_rgb(path, need=2 * size)      # the smallest crop keeps half of each side
    top, left, h, w = crop_params(im.width, im.height, rng)
    im = F.resized_crop(im, top, left, h, w, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if rng.random() < 0.5:
        im = F.hflip(im)
    return F.pil_to_tensor(im)


def eval_image(path: str, size: int) -> torch.Tensor:
    """uint8 (3, size, size): the shorter side resized to size, then the centre square. Decoded
    at full scale (no JPEG draft), so that `p2pfed predict` and any other runtime that follows
    the rule in the ONNX metadata see exactly these pixels."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F
    im = open_rgb(path)
    if im.size != (size, size):
        im = F.resize(im, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        im = F.center_crop(im, [size, size])
    return F.pil_to_tensor(im)


def _decode_one(path: str, size: int, seed: int | None):
    try:
        return eval_image(path, size) if seed is None else train_image(path, size, seed)
    except BadImage as e:
        return e


class Decoder:
    """A pool of decoding threads, shared by a peer's training stream and its evaluation."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        self.bad: dict[str, str] = {}           # file -> why, every unreadable file met so far

    def submit(self, path: str, size: int, seed: int | None = None) -> Future:
        return self._pool.submit(_decode_one, path, size, seed)

    def note_bad(self, e: BadImage) -> None:
        if e.path not in self.bad:
            self.bad[e.path] = e.why
            log.warning("skipped an unreadable image: %s (%s); remove or replace the file", e.path, e.why)

    def decode(self, files: list[str], size: int, seeds: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
        """Decode files at size (eval rule, or training crops with per-image seeds): the uint8
        images of the readable ones and their positions in files."""
        futures = [self.submit(f, size, None if seeds is None else seeds[i]) for i, f in enumerate(files)]
        images, kept = self._collect(futures)
        return (torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)), kept

    def _collect(self, futures: list[Future], first: int = 0) -> tuple[list[torch.Tensor], list[int]]:
        """The decoded images of futures in order, and their positions (from `first`); the
        unreadable ones noted and left out."""
        images, kept = [], []
        for i, fut in enumerate(futures):
            got = fut.result()
            if isinstance(got, BadImage):
                self.note_bad(got)
            else:
                images.append(got)
                kept.append(first + i)
        return images, kept

    def chunks(self, files: list[str], labels: np.ndarray, size: int, batch_size: int):
        """Yield (uint8 images, labels) of the readable files in order, eval rule, batch by batch,
        decoding the next batch while the caller works on this one."""
        pending: deque = deque()
        starts = iter(range(0, len(files), batch_size))

        def queue_next() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append((start, [self.submit(f, size) for f in files[start:start + batch_size]]))

        queue_next()
        queue_next()
        while pending:
            start, futures = pending.popleft()
            queue_next()
            images, keep = self._collect(futures, start)
            if images:
                yield torch.stack(images), torch.from_numpy(labels[keep])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class PhotoStream:
    """Endless training batches decoded from files: epoch after epoch, each reshuffled with the
    peer's generator; the last batch of an epoch holds what is left of it. The same interface as
    augment.Stream (batch_size and size may change between batches); unreadable files are
    skipped and named once (Decoder.bad)."""

    def __init__(self, files: list[str], labels: np.ndarray, batch_size: int, generator: torch.Generator,
                 do_augment: bool, decode_size: int, size: int | None, decoder: Decoder, ahead_batches: int = 2,
                 device: torch.device | None = None):
        from .augment import normalize
        self._normalize = normalize
        self.files, self.labels = files, np.asarray(labels, dtype=np.int64)
        self.batch_size, self.generator, self.do_augment = batch_size, generator, do_augment
        self.decode_size, self.size, self.decoder = decode_size, size, decoder
        self.ahead_batches, self.device = ahead_batches, device
        self._seeds = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator).item()))
        self._queue: deque = deque()        # (future, label, last of its epoch, index)
        self._failed: set[int] = set()      # indices that could not be decoded
        self._order: list[int] = []
        self._pos = 0

    def __iter__(self) -> "PhotoStream":
        return self

    def _fill(self) -> None:
        want = (self.ahead_batches + 1) * self.batch_size
        while len(self._queue) < want:
            if self._pos >= len(self._order):
                self._order = torch.randperm(len(self.files), generator=self.generator).tolist()
                self._pos = 0
            i = self._order[self._pos]
            self._pos += 1
            seed = int(self._seeds.integers(0, 2 ** 62)) if self.do_augment else None
            self._queue.append((self.decoder.submit(self.files[i], self.decode_size, seed), int(self.labels[i]),
                                self._pos == len(self._order), i))

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        while len(images) < self.batch_size:
            self._fill()
            fut, label, last, i = self._queue.popleft()
            got = fut.result()
            if isinstance(got, BadImage):
                self.decoder.note_bad(got)
                self._failed.add(i)
                if len(self._failed) == len(self.files):
                    from .folders import DataError
                    raise DataError(f"none of the {len(self.files)} training images can be decoded (e.g. {got}); "
                                    f"check the folder")
            else:
                images.append(got)
                labels.append(label)
            if last and images:
                break
        x, y = self._normalize(torch.stack(images), self.size), torch.tensor(labels, dtype=torch.int64)
        if self.device is not None and self.device.type != "cpu":
            x, y = x.to(self.device), y.to(self.device)
        return x, y
