"""`prep glyphs --task reading`: digit strings at a controlled ink height (the reading study).

Each sample is the glyph document `["Read the text in the image.", <image>, 'The text says
"407".']`, made so that what the image shows is under control (data_prep/README.md, "The
reading task"):

- the string is `length` random digits. A fixed share (HELD_OUT) of all 10**length strings,
  picked by a seeded permutation, never appears in train; val draws half its strings from
  them (`pool: "held_out"`) and half from the training pool (`pool: "train"`);
- the image is a fixed canvas (default 48x24) of one flat colour with the string in one
  contrasting colour; the ink height is drawn uniformly per image from `heights`;
- the ink is exactly `height` pixel rows tall: the string is drawn with Pillow's built-in font
  at RENDER_SCALE x height points, binarized at half coverage, cropped to its ink box and
  scaled with area averaging (Pillow BOX, in floating point) to `height` rows (the width in
  proportion), then composited over the background. Every scaled row covers at least one
  ink pixel of the large render and the canvas is flat, so the rows holding a pixel that
  differs from the background are exactly `height` (checked over all heights by the tests).

Sample i of a split depends only on (seed, split, i) and the task's arguments.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from .errors import UsageError
from .glyphs import _SPLIT_IDS, _elements, _luma, contrasting_colour, font
from .imageio import StoredImage, png_bytes

HEIGHTS = (4, 6, 8, 12, 16)  # ink height in pixels; 8 px windows: 0.5 to 2 windows
LENGTH = 3  # digits per string
CANVAS = (48, 24)  # width, height of every image
HELD_OUT = 0.1  # share of all strings never drawn for train
VAL_UNSEEN = 0.5  # share of val strings drawn from the held-out ones
RENDER_SCALE = 6  # points of the large render per pixel of target ink height
MAX_LENGTH = 6


def check_args(length: int, heights: tuple[int, ...], canvas: tuple[int, int]) -> None:
    """One UsageError naming the argument when the task cannot be drawn as asked."""
    if not 1 <= length <= MAX_LENGTH:
        raise UsageError(f"--length {length}: must be between 1 and {MAX_LENGTH} digits")
    if not heights or min(heights) < 2:
        raise UsageError(f"--heights {_csv(heights)}: need at least one height, each at least 2 px")
    w, h = canvas
    if max(heights) > h:
        raise UsageError(f"--heights {_csv(heights)}: {max(heights)} px is taller than the "
                         f"--canvas {w}x{h}")  # fmt: skip
    widest = max(_ink(str(d) * length, max(heights)).shape[1] for d in range(10))
    if widest > w:
        raise UsageError(f"--canvas {w}x{h}: {length} digits at {max(heights)} px are up to "
                         f"{widest} px wide; widen the canvas or lower --heights/--length")  # fmt: skip


def _csv(heights) -> str:
    return ",".join(str(h) for h in heights)


@cache
def pools(seed: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, held-out strings) as integers below 10**length, sorted."""
    n = 10**length
    perm = np.random.default_rng([seed, 2]).permutation(n)
    held = max(1, round(HELD_OUT * n))
    return np.sort(perm[held:]), np.sort(perm[:held])


def draw_string(rng: np.random.Generator, seed: int, split: str, length: int) -> tuple[str, str]:
    """(digits, pool it came from): train only from the training pool, val half from each."""
    train, held = pools(seed, length)
    pool = "held_out" if split == "val" and rng.random() < VAL_UNSEEN else "train"
    values = held if pool == "held_out" else train
    return f"{int(values[rng.integers(len(values))]):0{length}d}", pool


@cache
def _big_mask(text: str, size: int) -> np.ndarray:
    """`text` drawn at `size` points, binarized at half coverage, cropped to its ink box."""
    f = font(size)
    left, top, right, bottom = f.getbbox(text)
    big = Image.new("L", (right - left + 2 * size, bottom - top + 2 * size), 0)
    ImageDraw.Draw(big).text((size - left, size - top), text, fill=255, font=f)
    mask = np.asarray(big) >= 128
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@cache
def _ink(text: str, height: int) -> np.ndarray:
    """Coverage (float, 0-1) of `text` scaled to exactly `height` rows of ink."""
    mask = _big_mask(text, RENDER_SCALE * height)
    width = max(1, round(mask.shape[1] * height / mask.shape[0]))
    small = Image.fromarray(mask.astype(np.float32), "F").resize((width, height), Image.BOX)
    return np.clip(np.asarray(small), 0.0, 1.0)


def render(rng: np.random.Generator, text: str, height: int,
           canvas: tuple[int, int]) -> tuple[Image.Image, dict]:  # fmt: skip
    """The canvas with `text` exactly `height` px tall at a random place -> image, glyph."""
    w, h = canvas
    cover = _ink(text, height)
    tw = cover.shape[1]
    bg = rng.integers(0, 256, 3).astype(float)
    fg = contrasting_colour(rng, _luma(bg), _luma(bg)).astype(float)
    x, y = int(rng.integers(0, w - tw + 1)), int(rng.integers(0, h - height + 1))
    alpha = np.zeros((h, w, 1))
    alpha[y : y + height, x : x + tw, 0] = cover
    pixels = np.broadcast_to(bg, (h, w, 3)) * (1 - alpha) + fg * alpha
    img = Image.fromarray(pixels.round().astype(np.uint8))
    size = RENDER_SCALE * height
    glyph = {
        "task": "reading", "drawn": text, "text_height": height, "text_width": tw, "x": x, "y": y,
        "font_size": round(size * height / _big_mask(text, size).shape[0], 3), "render_size": size,
        "fg": [int(c) for c in fg], "bg": [int(c) for c in bg],
    }  # fmt: skip
    return img, glyph


def make_sample(seed: int, split: str, i: int, length: int = LENGTH, heights=HEIGHTS,
                canvas=CANVAS) -> tuple[list[dict], Image.Image]:  # fmt: skip
    """Elements and image of sample i of `split`; depends only on (seed, split, i, task args)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
    text, pool = draw_string(rng, seed, split, length)
    height = int(heights[rng.integers(len(heights))])
    img, glyph = render(rng, text, height, tuple(canvas))
    glyph["pool"] = pool
    return _elements(split, i, text, glyph), img


def train_texts(seed: int, num_train: int, length: int):
    """The train split's text without rendering (the string is drawn first from each stream)."""
    for i in range(num_train):
        text, _ = draw_string(np.random.default_rng([seed, _SPLIT_IDS["train"], i]), seed,
                              "train", length)  # fmt: skip
        for el in _elements("train", i, text):
            if el["type"] == "text":
                yield el["text"]


def reading_work(payload: tuple):
    """Worker: render sample i of a split of the reading task."""
    seed, split, i, length, heights, canvas = payload
    elements, img = make_sample(seed, split, i, length, heights, canvas)
    stored = StoredImage(png_bytes(img), img.width, img.height, "png")
    return [(elements, elements[1]["name"], [stored])], []
