"""`prep glyphs`: a built-in, offline dataset of small rendered strings.

This is the paper's motivating case (small text and digits that a ViT patch blurs): each
sample is "Read the text in the image." + a tiny image of a licence plate, number or
word + a caption that states the string exactly. Sample i of a split is drawn from its
own random stream (seed, split, i), so it does not depend on --num-train/--num-val.
"""

import math
import warnings
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import UsageError
from .imageio import StoredImage, png_bytes
from .pipeline import run_items
from .shards import DatasetWriter
from .tokenizer import save_tokenizer, train_tokenizer

PROMPT = "Read the text in the image."
FONT_SIZES = (8, 9, 10, 11, 12, 13, 14, 16)
MAX_W, MAX_H, MIN_W, MIN_H = 96, 40, 24, 12
MIN_CONTRAST = 100  # luma difference (0-255) between text and every background pixel
# fmt: off
WORDS = (
    "stop", "exit", "open", "closed", "bus", "taxi", "gate", "park", "zone", "lane", "north",
    "south", "east", "west", "cafe", "hotel", "bank", "road", "city", "level", "floor", "room",
    "entry", "push", "pull", "sale", "info", "help", "left", "right", "next",
)
# fmt: on
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I/O/Q: they read like digits on real plates
_SPLIT_IDS = {"train": 0, "val": 1}
TASKS = ("assorted", "reading")
NUM_DEFAULTS = {"assorted": (4000, 256), "reading": (20000, 1024)}  # --num-train, --num-val


@cache
def font(size: int):
    """Pillow's built-in scalable font; the bitmap default if FreeType is missing."""
    f = ImageFont.load_default(size=size)
    if not isinstance(f, ImageFont.FreeTypeFont):
        warnings.warn("FreeType unavailable: glyphs use Pillow's fixed bitmap font", stacklevel=2)
    return f


def random_string(rng: np.random.Generator) -> tuple[str, str]:
    """(text as drawn, text as the caption states it); they differ only for stacked plates."""
    kind = rng.choice(["plate", "number", "word"], p=[0.4, 0.3, 0.3])
    if kind == "plate":
        pattern = rng.choice(["LL DDD LL", "DLL-DDD", "LLL DDDD", "LL-DD-LL", "DDD LLL"])
        text = "".join(_fill(c, rng) for c in pattern)
        if " " in text and rng.random() < 0.2:  # a taller, stacked plate
            return text.replace(" ", "\n"), text
        return text, text
    if kind == "number":
        form = rng.integers(3)
        if form == 0:
            text = str(rng.integers(0, 10 ** rng.integers(1, 6)))
        elif form == 1:
            text = f"{rng.integers(0, 1000)}.{rng.integers(0, 100):0{rng.integers(1, 3)}d}"
        else:
            text = f"{rng.integers(0, 100)}%"
        return text, text
    word = WORDS[rng.integers(len(WORDS))]
    word = [word, word.upper(), word.title()][rng.integers(3)]
    return word, word


def _fill(c: str, rng: np.random.Generator) -> str:
    """A random letter for L, digit for D; separators stay."""
    if c == "L":
        return LETTERS[rng.integers(len(LETTERS))]
    return str(rng.integers(10)) if c == "D" else c


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def contrasting_colour(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A random colour whose luma is MIN_CONTRAST below `lo` or above `hi` (the background's
    luma range); after 20 tries black or white, whichever contrasts more."""
    for _ in range(20):
        fg = rng.integers(0, 256, 3)
        if _luma(fg) <= lo - MIN_CONTRAST or _luma(fg) >= hi + MIN_CONTRAST:
            return fg
    return np.zeros(3, int) if 255 - hi < lo else np.full(3, 255)


def render(rng: np.random.Generator, drawn: str) -> tuple[Image.Image, dict]:
    """Draw `drawn` on a small background with a contrasting colour and a small offset
    -> the image and what was drawn (string, font size, text box in pixels)."""
    size = int(rng.choice(FONT_SIZES))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while True:  # shrink the font until the text fits the size limits
        box = probe.textbbox((0, 0), drawn, font=font(size), spacing=1, align="center")
        tw, th = math.ceil(box[2] - box[0]), math.ceil(box[3] - box[1])
        if (tw + 4 <= MAX_W and th + 4 <= MAX_H) or size == FONT_SIZES[0]:
            break
        size -= 1
    w = min(MAX_W, max(MIN_W, tw + 2 * int(rng.integers(2, 6))))
    h = min(MAX_H, max(MIN_H, th + 2 * int(rng.integers(2, 5))))

    base = rng.integers(0, 256, 3).astype(float)
    style = rng.integers(3)
    if style == 0:  # flat
        bg = np.broadcast_to(base, (h, w, 3))
    elif style == 1:  # two-tone gradient, vertical or horizontal
        other = np.clip(base + rng.integers(-60, 61, 3), 0, 255)
        t = (
            np.linspace(0, 1, h)[:, None, None]
            if rng.random() < 0.5
            else np.linspace(0, 1, w)[None, :, None]
        )
        bg = base * (1 - t) + other * t
        bg = np.broadcast_to(bg, (h, w, 3))
    else:  # light noise
        bg = np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255)
    fg = contrasting_colour(rng, _luma(bg).min(), _luma(bg).max())

    img = Image.fromarray(np.ascontiguousarray(bg).round().astype(np.uint8))
    x = int(rng.integers(1, max(2, w - tw)))
    y = int(rng.integers(1, max(2, h - th)))
    ImageDraw.Draw(img).text(
        (x - box[0], y - box[1]), drawn, fill=tuple(int(c) for c in fg),
        font=font(size), spacing=1, align="center",
    )  # fmt: skip
    return img, {"drawn": drawn, "font_size": size, "text_width": tw, "text_height": th}


def make_sample(seed: int, split: str, i: int) -> tuple[list[dict], Image.Image]:
    """Elements and image of sample i of `split`; depends only on (seed, split, i)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
    drawn, said = random_string(rng)
    img, glyph = render(rng, drawn)
    return _elements(split, i, said, glyph), img


def _elements(split: str, i: int, said: str, glyph: dict | None = None) -> list[dict]:
    image = {"type": "image", "name": f"glyph_{split}_{i:06d}.png"}
    if glyph is not None:  # what was drawn, for the reading breakdown (data_prep/README.md)
        image["glyph"] = glyph
    return [
        {"type": "text", "text": PROMPT},
        image,
        {"type": "text", "text": f'The text says "{said}".'},
    ]


def _train_texts(seed: int, num_train: int):
    """The train split's text without rendering: the string is drawn first from each
    sample's stream, so this matches make_sample exactly."""
    for i in range(num_train):
        said = random_string(np.random.default_rng([seed, _SPLIT_IDS["train"], i]))[1]
        for el in _elements("train", i, said):
            if el["type"] == "text":
                yield el["text"]


def build_glyphs(
    out: Path,
    *,
    num_train: int | None = None,
    num_val: int | None = None,
    seed: int = 0,
    vocab_size: int = 1000,
    task: str = "assorted",
    length: int | None = None,
    heights: tuple[int, ...] | None = None,
    canvas: tuple[int, int] | None = None,
    strings: str | None = None,
    ink: str | None = None,
    place: str | None = None,
    workers: int = 1,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Generate, tokenize and write the glyph dataset; return the report. `task`: "assorted"
    (plates, numbers, words) or "reading" (digit strings or words at exact ink heights,
    reading.py; `length`, `heights`, `canvas`, `strings`, `ink` and `place` apply to it alone;
    None: its defaults, `heights` those of `strings`)."""
    from . import reading

    out = Path(out)
    if task not in TASKS:
        raise UsageError(f"--task {task}: choose one of {', '.join(TASKS)}")
    task_args = (length, heights, canvas, strings, ink, place)
    if task != "reading" and any(a is not None for a in task_args):
        raise UsageError("--length, --heights, --canvas, --strings, --ink and --place apply to "
                         "--task reading only")  # fmt: skip
    strings, ink, place = strings or "digits", ink or "random", place or "random"
    if strings == "words" and length is not None:
        raise UsageError("--length applies to --strings digits only (words have their own lengths)")
    num_train = num_train if num_train is not None else NUM_DEFAULTS[task][0]
    num_val = num_val if num_val is not None else NUM_DEFAULTS[task][1]
    args = {
        "command": "glyphs", "out": str(out), "num_train": num_train, "num_val": num_val,
        "seed": seed, "vocab_size": vocab_size,
    }  # fmt: skip
    if task == "reading":  # the assorted task keeps its old arguments (older builds resume)
        length = reading.LENGTH if length is None else length
        heights = tuple(reading.default_heights(strings) if heights is None else heights)
        canvas = tuple(reading.CANVAS if canvas is None else canvas)
        reading.check_args(length, heights, canvas, strings, ink, place)
        args.update(task=task, length=length, heights=list(heights), canvas=list(canvas))
        if strings != "digits":  # digit builds keep their arguments (and bytes)
            args.update(strings=strings, length=None)
        if (ink, place) != ("random", "random"):  # earlier builds keep their arguments
            args.update(ink=ink, place=place)
        work, extra = reading.reading_work, (length, heights, canvas, strings, ink, place)
        texts = reading.train_texts(seed, num_train, length, strings)
    else:
        work, extra, texts = glyph_work, (), _train_texts(seed, num_train)
    items = [(split, (seed, split, i, *extra)) for split, n in (("train", num_train), ("val", num_val))
             for i in range(n)]  # fmt: skip
    writer = DatasetWriter(out, "glyphs", 1000, args, len(items), overwrite)
    if writer.complete:
        return writer.saved_report()
    if not (writer.resumed and (out / "tokenizer.json").is_file()):
        tok = (reading.word_tokenizer(texts, vocab_size) if task == "reading" and strings == "words"
               else train_tokenizer(texts, vocab_size, split_digits=task == "reading"))  # fmt: skip
        save_tokenizer(tok, out)
    writer.tokenizer = "../tokenizer.json"
    return run_items(writer, items, work, {}, workers=workers, progress=progress,
                     label="prep glyphs")  # fmt: skip


def glyph_work(payload: tuple[int, str, int]):
    """Worker: render sample i of a split."""
    elements, img = make_sample(*payload)
    stored = StoredImage(png_bytes(img), img.width, img.height, "png")
    return [(elements, elements[1]["name"], [stored])], []
