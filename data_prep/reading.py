"""`prep glyphs --task reading`: digit strings or words at a controlled ink height (the reading study).

Each sample is the glyph document `["Read the text in the image.", <image>, 'The text says
"407".']`, made so that what the image shows is under control (data_prep/README.md, "The
reading task"):

- `strings="digits"` (default): `length` random digits. A fixed share (HELD_OUT) of all
  10**length strings, picked by a seeded permutation, never appears in train; val draws half
  its strings from them (`pool: "held_out"`) and half from the training pool (`pool: "train"`);
- `strings="words"`: one of the WORDS (56 common English words of 2-4 capital letters, a
  closed set); WORDS_HELD_OUT of them, picked by a seeded permutation, never appear in train,
  and val draws a quarter (VAL_UNSEEN_WORDS) of its strings from them. Its tokenizer makes
  every word of the list one token (word_tokenizer): a closed set, read as a whole;
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
STRINGS = ("digits", "words")  # --strings
INKS = ("random", "black")  # --ink: random contrasting colours on a random flat colour, or black on white
PLACES = ("random", "center")  # --place: the string at a random place, or centred
# fmt: off
WORDS = (  # capitals: every letter spans the ink height (no ascenders or descenders)
    "GO", "UP", "ON", "IN", "AT", "TO", "NO", "SO", "BY", "IF", "IT", "WE", "HE", "ME", "MY", "OR",
    "BUS", "CAR", "CAT", "DOG", "SUN", "RED", "BIG", "HOT", "ONE", "TWO", "TEN", "YES", "MAP",
    "ART", "AIR", "ICE", "SEA", "SKY", "BOX", "KEY",
    "STOP", "EXIT", "OPEN", "PARK", "GATE", "TAXI", "ZONE", "LANE", "EAST", "CAFE", "BANK",
    "ROAD", "CITY", "PUSH", "PULL", "SALE", "INFO", "HELP", "LEFT", "NEXT",
)
# fmt: on
WORDS_HELD_OUT = 8  # of the 56 words, never drawn for train
VAL_UNSEEN_WORDS = 0.25  # share of val words drawn from the held-out ones
WORD_HEIGHTS = (4, 6, 8, 12)  # 4-letter capitals at 16 px are wider than the 48 px canvas


def default_heights(strings: str = "digits") -> tuple[int, ...]:
    return WORD_HEIGHTS if strings == "words" else HEIGHTS


def check_args(length: int, heights: tuple[int, ...], canvas: tuple[int, int],
               strings: str = "digits", ink: str = "random", place: str = "random") -> None:  # fmt: skip
    """One UsageError naming the argument when the task cannot be drawn as asked."""
    if ink not in INKS:
        raise UsageError(f"--ink {ink}: choose one of {', '.join(INKS)}")
    if place not in PLACES:
        raise UsageError(f"--place {place}: choose one of {', '.join(PLACES)}")
    if strings not in STRINGS:
        raise UsageError(f"--strings {strings}: choose one of {', '.join(STRINGS)}")
    if strings == "words":
        _check_size(heights, canvas, WORDS, "the widest word at {} px is")
        return
    if not 1 <= length <= MAX_LENGTH:
        raise UsageError(f"--length {length}: must be between 1 and {MAX_LENGTH} digits")
    _check_size(heights, canvas, [str(d) * length for d in range(10)],
                f"{length} digits at {{}} px are up to")  # fmt: skip


def _check_size(heights, canvas, texts, what: str) -> None:
    """Every height fits the canvas's height and the widest of `texts` its width."""
    if not heights or min(heights) < 2:
        raise UsageError(f"--heights {_csv(heights)}: need at least one height, each at least 2 px")
    w, h = canvas
    if max(heights) > h:
        raise UsageError(f"--heights {_csv(heights)}: {max(heights)} px is taller than the "
                         f"--canvas {w}x{h}")  # fmt: skip
    widest = max(_ink(t, max(heights)).shape[1] for t in texts)
    if widest > w:
        raise UsageError(f"--canvas {w}x{h}: {what.format(max(heights))} {widest} px wide; "
                         "widen the canvas or lower --heights/--length")  # fmt: skip


def _csv(heights) -> str:
    return ",".join(str(h) for h in heights)


@cache
def pools(seed: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, held-out strings) as integers below 10**length, sorted."""
    n = 10**length
    perm = np.random.default_rng([seed, 2]).permutation(n)
    held = max(1, round(HELD_OUT * n))
    return np.sort(perm[held:]), np.sort(perm[:held])


@cache
def word_pools(seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training words, held-out words), each in WORDS' order."""
    perm = np.random.default_rng([seed, 3]).permutation(len(WORDS))
    held = set(perm[:WORDS_HELD_OUT].tolist())
    return (tuple(w for i, w in enumerate(WORDS) if i not in held),
            tuple(w for i, w in enumerate(WORDS) if i in held))  # fmt: skip


def draw_string(rng: np.random.Generator, seed: int, split: str, length: int,
                strings: str = "digits") -> tuple[str, str]:  # fmt: skip
    """(string, pool it came from): train only from the training pool, val from both."""
    if strings == "words":
        train_words, held_words = word_pools(seed)
        pool = "held_out" if split == "val" and rng.random() < VAL_UNSEEN_WORDS else "train"
        words = held_words if pool == "held_out" else train_words
        return words[rng.integers(len(words))], pool
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


def render(rng: np.random.Generator, text: str, height: int, canvas: tuple[int, int],
           ink: str = "random", place: str = "random") -> tuple[Image.Image, dict]:  # fmt: skip
    """The canvas with `text` exactly `height` px tall -> image, glyph. `ink`: "random" (a random
    flat background, the text in a random contrasting colour) or "black" (black on white);
    `place`: "random" (anywhere it fits) or "center" (centred, rounded down)."""
    w, h = canvas
    cover = _ink(text, height)
    tw = cover.shape[1]
    if ink == "black":
        bg, fg = np.full(3, 255.0), np.zeros(3)
    else:
        bg = rng.integers(0, 256, 3).astype(float)
        fg = contrasting_colour(rng, _luma(bg), _luma(bg)).astype(float)
    if place == "center":
        x, y = (w - tw) // 2, (h - height) // 2
    else:
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
                canvas=CANVAS, strings: str = "digits", ink: str = "random",
                place: str = "random") -> tuple[list[dict], Image.Image]:  # fmt: skip
    """Elements and image of sample i of `split`; depends only on (seed, split, i, task args)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
    text, pool = draw_string(rng, seed, split, length, strings)
    height = int(heights[rng.integers(len(heights))])
    img, glyph = render(rng, text, height, tuple(canvas), ink, place)
    glyph["pool"] = pool
    if strings != "digits":  # digit builds keep their bytes
        glyph["strings"] = strings
    if (ink, place) != ("random", "random"):
        glyph.update(ink=ink, place=place)
    return _elements(split, i, text, glyph), img


def train_texts(seed: int, num_train: int, length: int, strings: str = "digits"):
    """The train split's text without rendering (the string is drawn first from each stream)."""
    for i in range(num_train):
        text, _ = draw_string(np.random.default_rng([seed, _SPLIT_IDS["train"], i]), seed,
                              "train", length, strings)  # fmt: skip
        for el in _elements("train", i, text):
            if el["type"] == "text":
                yield el["text"]


def word_tokenizer(texts, vocab_size: int):
    """The usual byte-level BPE (tokenizer.train_tokenizer) with every word of WORDS added as one
    token, held-out words included: a word answer is exactly one token, then the closing `".`.
    (Every letter its own token, tried first, was not read: results/reading_small/pilot_words.)"""
    from .tokenizer import train_tokenizer

    tok = train_tokenizer(texts, vocab_size)
    tok.add_tokens(list(WORDS))
    return tok


def reading_work(payload: tuple):
    """Worker: render sample i of a split of the reading task."""
    seed, split, i, length, heights, canvas, strings, ink, place = payload
    elements, img = make_sample(seed, split, i, length, heights, canvas, strings, ink, place)
    stored = StoredImage(png_bytes(img), img.width, img.height, "png")
    return [(elements, elements[1]["name"], [stored])], []
