"""`pixword prep ...`: command-line front end of the three builders.

`main(argv)` takes the words after `prep`, returns the exit code (0 ok, even with
skipped inputs; 2 when the input or output is unusable or nothing was written) and
never raises for bad input, so the pixword CLI can delegate to it directly.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from . import reading
from .documents import TEXT_MODES
from .errors import UsageError
from .glyphs import TASKS, build_glyphs
from .imageio import IMAGE_EXTS, STORE_MODES
from .images import DEFAULT_MAX_SIDE, build_images
from .llava import MODES, PROMPTS, build_llava
from .mixed import build_mixed
from .pipeline import default_workers
from .report import summary
from .shards import STATE

IMAGES_HELP = f"""Turn a folder of images (searched recursively; any file is tried, names starting
with '.' are ignored; typical suffixes: {", ".join(sorted(IMAGE_EXTS))}) into image-only
WebDataset shards of 8-bit RGB images under OUT/train and OUT/val. Unreadable, truncated,
empty and non-image files and decompression bombs are skipped and listed in
OUT/report.json."""
MIXED_HELP = """Turn documents in the paper's format (text with images inline as
<|image|>NAME<|/image|>, NAME relative to --images or absolute; DOCS is one .txt file or
a folder searched recursively for *.txt) into mixed samples. A byte-level BPE tokenizer is
trained on the train split's text and saved to OUT/tokenizer.json; documents are then
packed so each sample fits --max-seq-len (an image counts 2 + (image_size/window_size)^2).
Bad documents, missing or unreadable images are skipped and listed in OUT/report.json."""
LLAVA_HELP = """Turn the LLaVA pretraining files (chat.json of LLaVA-CC3M-Pretrain-595K,
or blip_laion_cc_sbu_558k.json: a JSON list of {"id", "image", "conversations"}) and their
images (a folder, or images.zip read in place without unpacking) into shards.
--mode image_only: one image-only sample per entry (the paper's image-only pretraining).
--mode mixed: one document per entry in the paper's format: the human prompt's text with
the image at <image> (--prompt keep; --prompt drop leaves only the image), then the
caption; a tokenizer is trained on the train split (or --tokenizer reused). Malformed
entries and missing or unreadable images are skipped and listed in OUT/report.json."""
GLYPHS_HELP = """Generate the built-in offline dataset of small rendered strings (licence
plates, numbers, short words) with captions that state the text exactly: the paper's
motivating case for pixel tokens. Deterministic for a given --seed; sample i does not
depend on the counts. Also trains OUT/tokenizer.json on the train captions. --task reading
draws digit strings at exact ink heights for the reading study (every digit its own token);
with --strings words, 2-4 letter capital words from a closed list of 56, 8 of them never in
train (every word one token)."""


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{s} is not between 0 and 1")
    return v


def _at_least(lo: int):
    def parse(s: str) -> int:
        v = int(s)
        if v < lo:
            raise argparse.ArgumentTypeError(f"{s} is less than {lo}")
        return v

    return parse


def _heights(s: str) -> tuple[int, ...]:
    try:
        v = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of pixels") from None
    if not v or min(v) < 2:
        raise argparse.ArgumentTypeError(f"{s}: every height must be at least 2 px")
    return v


def _canvas(s: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not WIDTHxHEIGHT, e.g. 48x24") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{s}: width and height must be positive")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixword prep",
        description="Write WebDataset shards of pixels (8-bit RGB PNG or JPEG) for pixword.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, text):
        p = sub.add_parser(
            name,
            help=text.split(".")[0],
            description=text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        p.add_argument("--out", type=Path, required=True, help="output folder")
        p.add_argument("--seed", type=_at_least(0), default=0, help="seed for split and generation")
        p.add_argument("--workers", type=_at_least(1), default=default_workers(),
                       help="processes decoding and encoding (default: all cores); the "
                       "output does not depend on it")  # fmt: skip
        p.add_argument("--overwrite", action="store_true",
                       help="start over instead of continuing an interrupted build in OUT")  # fmt: skip
        return p

    def add_split_args(p, max_side=DEFAULT_MAX_SIDE, max_side_help=""):
        p.add_argument(
            "--val-fraction",
            type=_fraction,
            default=0.05,
            help="share of inputs (by stable hash of their name) put in val",
        )
        p.add_argument("--shard-size", type=_at_least(1), default=1000, help="samples per shard")
        p.add_argument("--max-side", type=_at_least(0), default=max_side,
                       help="downscale so the longer side is at most N (0: keep size); at "
                       "least the largest image size you will train at" + max_side_help)  # fmt: skip
        p.add_argument("--store", choices=STORE_MODES, default="original",
                       help="original: keep an 8-bit RGB JPEG's own bytes when it needs no "
                       "resize or rotation; png: re-encode every image as PNG")  # fmt: skip
        p.add_argument("--limit", type=_at_least(1), default=None,
                       help="keep only the first N inputs in the authors' order (file names "
                       "sorted lower-cased, as their loader lists a folder; llava: the entries' "
                       "image names), as their train_model.py -l N; the split is made within "
                       "them")  # fmt: skip

    def add_packing_args(p):
        p.add_argument("--image-size", type=_at_least(1), default=224, help="S of method.md §3")
        p.add_argument("--window-size", type=_at_least(1), default=16, help="w of method.md §3")
        p.add_argument("--max-seq-len", type=_at_least(2), default=1024, help="decoder length T")
        p.add_argument("--vocab-size", type=_at_least(6), default=32000, help="BPE vocabulary")
        p.add_argument("--tokenizer", type=Path, default=None,
                       help="reuse this tokenizer.json (special tokens at ids 0-5) instead "
                       "of training one")  # fmt: skip
        p.add_argument("--text", choices=TEXT_MODES, default="strip",
                       help="strip: text around images stripped, strict tags; authors: the "
                       "authors' parser (whitespace kept, their trimming, an unreadable image's "
                       "tags kept as text); needs --tokenizer (theirs)")  # fmt: skip

    p = add("images", IMAGES_HELP)
    p.add_argument("dir", type=Path, help="folder of images")
    add_split_args(p)

    p = add("mixed", MIXED_HELP)
    p.add_argument("docs", type=Path, help="a .txt document or a folder of them")
    p.add_argument("--images", type=Path, required=True,
                   help="folder (or zip) image names refer to")  # fmt: skip
    add_packing_args(p)
    add_split_args(p, None, " (default: --image-size)")

    p = add("llava", LLAVA_HELP)
    p.add_argument("--json", type=Path, required=True, help="chat.json (LLaVA pretraining format)")
    p.add_argument("--images", type=Path, required=True, help="images folder or images.zip")
    p.add_argument("--mode", choices=MODES, default="image_only", help="what a sample holds")
    p.add_argument("--prompt", choices=PROMPTS, default="keep",
                   help="mixed: keep the human prompt's text around the image, or drop it")  # fmt: skip
    add_packing_args(p)
    add_split_args(p)

    p = add("glyphs", GLYPHS_HELP)
    p.add_argument("--task", choices=TASKS, default="assorted",
                   help="assorted: plates, numbers and words at varied sizes; reading: digit "
                   "strings (or words, --strings) at exact ink heights on a fixed canvas, some "
                   "val strings never in train (data_prep/README.md)")  # fmt: skip
    p.add_argument("--num-train", type=_at_least(1), default=None,
                   help="train samples (None: 4000; --task reading: 20000)")  # fmt: skip
    p.add_argument("--num-val", type=_at_least(0), default=None,
                   help="val samples (None: 256; --task reading: 1024)")  # fmt: skip
    p.add_argument("--vocab-size", type=_at_least(6), default=1000, help="BPE vocabulary")
    p.add_argument("--length", type=_at_least(1), default=None,
                   help=f"--task reading --strings digits: digits per string (None: "
                   f"{reading.LENGTH})")  # fmt: skip
    p.add_argument("--heights", type=_heights, default=None,
                   help="--task reading: ink heights in pixels, comma-separated, one drawn "
                   f"uniformly per image (None: {','.join(map(str, reading.HEIGHTS))}; "
                   f"--strings words: {','.join(map(str, reading.WORD_HEIGHTS))})")  # fmt: skip
    p.add_argument("--canvas", type=_canvas, default=None,
                   help="--task reading: WIDTHxHEIGHT of every image in pixels (None: "
                   f"{reading.CANVAS[0]}x{reading.CANVAS[1]})")  # fmt: skip
    p.add_argument("--strings", choices=reading.STRINGS, default=None,
                   help="--task reading: digits: --length random digits, 10%% of all strings "
                   f"held out; words: one of {len(reading.WORDS)} common words of 2-4 capital "
                   f"letters, {reading.WORDS_HELD_OUT} held out of train, a quarter of val from "
                   "them, heights by default "
                   f"{','.join(map(str, reading.WORD_HEIGHTS))} (None: digits)")  # fmt: skip
    p.add_argument("--ink", choices=reading.INKS, default=None,
                   help="--task reading: random: a random flat background and the text in a "
                   "random contrasting colour; black: black text on white (None: random)")  # fmt: skip
    p.add_argument("--place", choices=reading.PLACES, default=None,
                   help="--task reading: random: the text anywhere it fits on the canvas; "
                   "center: centred (None: random)")  # fmt: skip
    return parser


def _run(a: argparse.Namespace) -> tuple[dict, object]:
    """Call the builder for `a.command`; return its report and what it read from."""
    run = {"workers": a.workers, "overwrite": a.overwrite}
    if a.command == "glyphs":
        report = build_glyphs(a.out, num_train=a.num_train, num_val=a.num_val, seed=a.seed,
                              vocab_size=a.vocab_size, task=a.task, length=a.length,
                              heights=a.heights, canvas=a.canvas, strings=a.strings,
                              ink=a.ink, place=a.place, **run)  # fmt: skip
        return report, "the glyph generator"
    common = {
        "val_fraction": a.val_fraction, "shard_size": a.shard_size, "max_side": a.max_side,
        "store": a.store, "seed": a.seed, "limit": a.limit, **run,
    }  # fmt: skip
    if a.command == "images":
        return build_images(a.dir, a.out, **common), a.dir
    packing = {
        "image_size": a.image_size, "window_size": a.window_size, "max_seq_len": a.max_seq_len,
        "vocab_size": a.vocab_size, "tokenizer": a.tokenizer, "text": a.text,
    }  # fmt: skip
    if a.command == "llava":
        report = build_llava(a.json, a.images, a.out, mode=a.mode, prompt=a.prompt,
                             **packing, **common)  # fmt: skip
        return report, a.json
    return build_mixed(a.docs, a.images, a.out, **packing, **common), a.docs


def _complete(out: Path) -> bool:
    try:
        return json.loads((out / STATE).read_text(encoding="utf-8")).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run `prep SUBCOMMAND ...` (argv starts after the word `prep`); return the exit code."""
    try:
        a = build_parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error; argparse already printed why
        return e.code if isinstance(e.code, int) else 2
    start = time.monotonic()
    was_complete = not a.overwrite and _complete(a.out)
    try:
        report, source = _run(a)
    except UsageError as e:
        print(f"pixword prep {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pixword prep {a.command}: interrupted; rerun the same command to continue "
              + "after the last finished shard", file=sys.stderr)  # fmt: skip
        return 130
    print(summary(report, a.out))
    if was_complete:
        print(f"{a.out} was already complete: nothing redone (--overwrite rebuilds it)")
    else:
        print(f"time: {time.monotonic() - start:.1f} s with {a.workers} worker(s)")
    if not sum(report["samples_written"].values()):
        print(
            f"pixword prep {a.command}: error: no samples could be written from {source}; "
            + f"see {a.out / 'report.json'}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
