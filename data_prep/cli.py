"""`pixword prep ...`: command-line front end of the three builders.

`main(argv)` takes the words after `prep`, returns the exit code (0 ok, even with
skipped inputs; 2 when the input or output is unusable or nothing was written) and
never raises for bad input, so the pixword CLI can delegate to it directly.
"""

import argparse
import sys
from pathlib import Path

from .errors import UsageError
from .glyphs import build_glyphs
from .imageio import IMAGE_EXTS
from .images import build_images
from .mixed import build_mixed
from .report import summary

IMAGES_HELP = f"""Turn a folder of images (searched recursively; any file is tried, names starting
with '.' are ignored; typical suffixes: {", ".join(sorted(IMAGE_EXTS))}) into image-only
WebDataset shards of 8-bit RGB PNGs under OUT/train and OUT/val. Unreadable, truncated,
empty and non-image files and decompression bombs are skipped and listed in
OUT/report.json."""
MIXED_HELP = """Turn documents in the paper's format (text with images inline as
<|image|>NAME<|/image|>, NAME relative to --images or absolute; DOCS is one .txt file or
a folder searched recursively for *.txt) into mixed samples. A byte-level BPE tokenizer is
trained on the train split's text and saved to OUT/tokenizer.json; documents are then
packed so each sample fits --max-seq-len (an image counts 2 + (image_size/window_size)^2).
Bad documents, missing or unreadable images are skipped and listed in OUT/report.json."""
GLYPHS_HELP = """Generate the built-in offline dataset of small rendered strings (licence
plates, numbers, short words) with captions that state the text exactly: the paper's
motivating case for pixel tokens. Deterministic for a given --seed; sample i does not
depend on the counts. Also trains OUT/tokenizer.json on the train captions."""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixword prep",
        description="Write WebDataset shards of pixels (8-bit RGB PNG) for pixword.",
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
        return p

    def add_split_args(p):
        p.add_argument(
            "--val-fraction",
            type=_fraction,
            default=0.05,
            help="share of inputs (by stable hash of their name) put in val",
        )
        p.add_argument("--shard-size", type=_at_least(1), default=1000, help="samples per shard")
        p.add_argument("--max-side", type=_at_least(0), default=0,
                       help="downscale so the longer side is at most N (0: keep size)")  # fmt: skip

    p = add("images", IMAGES_HELP)
    p.add_argument("dir", type=Path, help="folder of images")
    add_split_args(p)

    p = add("mixed", MIXED_HELP)
    p.add_argument("docs", type=Path, help="a .txt document or a folder of them")
    p.add_argument("--images", type=Path, required=True, help="folder image names refer to")
    p.add_argument("--image-size", type=_at_least(1), default=224, help="S of method.md §3")
    p.add_argument("--window-size", type=_at_least(1), default=16, help="w of method.md §3")
    p.add_argument("--max-seq-len", type=_at_least(2), default=1024, help="decoder length T")
    p.add_argument("--vocab-size", type=_at_least(6), default=32000, help="BPE vocabulary")
    add_split_args(p)

    p = add("glyphs", GLYPHS_HELP)
    p.add_argument("--num-train", type=_at_least(1), default=4000, help="train samples")
    p.add_argument("--num-val", type=_at_least(0), default=256, help="val samples")
    p.add_argument("--vocab-size", type=_at_least(6), default=1000, help="BPE vocabulary")
    return parser


def _run(a: argparse.Namespace) -> tuple[dict, object]:
    """Call the builder for `a.command`; return its report and what it read from."""
    if a.command == "glyphs":
        report = build_glyphs(
            a.out, num_train=a.num_train, num_val=a.num_val, seed=a.seed, vocab_size=a.vocab_size
        )
        return report, "the glyph generator"
    common = {
        "val_fraction": a.val_fraction, "shard_size": a.shard_size, "max_side": a.max_side,
        "seed": a.seed,
    }  # fmt: skip
    if a.command == "images":
        return build_images(a.dir, a.out, **common), a.dir
    report = build_mixed(
        a.docs, a.images, a.out, image_size=a.image_size, window_size=a.window_size,
        max_seq_len=a.max_seq_len, vocab_size=a.vocab_size, **common,
    )  # fmt: skip
    return report, a.docs


def main(argv: list[str] | None = None) -> int:
    """Run `prep SUBCOMMAND ...` (argv starts after the word `prep`); return the exit code."""
    try:
        a = build_parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error; argparse already printed why
        return e.code if isinstance(e.code, int) else 2
    try:
        report, source = _run(a)
    except UsageError as e:
        print(f"pixword prep {a.command}: error: {e}", file=sys.stderr)
        return 2
    print(summary(report, a.out))
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
