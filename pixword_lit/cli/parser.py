"""The `pixword` command line: every subcommand, its arguments and their checks (a bad
number is one line, exit 2, before anything runs)."""

from __future__ import annotations

import argparse

from pixword_lit.cli.commands import (
    cmd_bench,
    cmd_compare,
    cmd_convert,
    cmd_eval,
    cmd_export,
    cmd_fit,
    cmd_generate,
    cmd_grid,
    cmd_inspect,
    cmd_print_config,
    cmd_validate,
)

DESCRIPTION = ("The `pixword` command: prep | fit | validate | generate | eval | inspect | "
               "print-config (and grid, compare, bench, convert-ckpt, export). Each subcommand has --help.")


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line, `pixword CMD: error: ...` (exit 2), like every
    other error of the command; `--help` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(low: int):
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def in_range(low: float, high: float, low_open: bool = False):
    """An argparse type: a number in [low, high] ((low, high] with low_open)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value if low_open else low <= value) or not value <= high or value != value:
            raise argparse.ArgumentTypeError(
                f"must be in {'(' if low_open else '['}{low:g}, {high:g}], got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="pixword", description=DESCRIPTION)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (anywhere on the line; or PIXWORD_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prep", add_help=False,
                   help="build WebDataset shards (images | mixed | llava | glyphs); "
                   "see `pixword prep --help`")

    f = sub.add_parser("fit", help="train an experiment",
                       description="Train from an experiment YAML; dotted overrides follow it, "
                       "e.g. `pixword fit experiments/quickstart.yaml trainer.max_steps=50 model.dim=128`.")
    f.add_argument("config")
    f.add_argument("overrides", nargs="*", help="key=value (dotted config keys)")
    f.add_argument("--resume", help="'last' (newest complete checkpoint of the run) or a checkpoint path")
    f.add_argument("--overwrite", action="store_true",
                   help="start again in a run folder that has checkpoints")
    f.add_argument("--resume-anyway", action="store_true",
                   help="resume even with another data.train, data.val, data.shuffle, run.seed "
                   "or global batch size (warned, recorded in summary.json)")
    f.set_defaults(fn=cmd_fit)

    v = sub.add_parser("validate", help="evaluate a checkpoint (.ckpt file, sharded fsdp folder or export)")
    v.add_argument("checkpoint")
    v.add_argument("overrides", nargs="*", help="key=value, e.g. data.val=other/val")
    v.set_defaults(fn=cmd_validate)

    i = sub.add_parser("inspect", help="show exactly what the model sees for an image or a mixed document")
    i.add_argument("path", help="an image, or a .txt document in the mixed format")
    i.add_argument("--images", help="image folder for a document's <|image|>NAME<|/image|> references")
    i.add_argument("--image-size", type=at_least(1), default=224)
    i.add_argument("--window-size", type=at_least(1), default=16)
    i.add_argument("--fold", type=at_least(1), default=16, help="uniform fold factor f")
    i.add_argument("--tokenizer", help="tokenizer.json for documents (default: special tokens only)")
    i.add_argument("--max-seq-len", type=at_least(1), default=1024)
    i.add_argument("--resample", default="bicubic",
                   help="the resize filter (a config's data.resample; default bicubic, as base.yaml)")
    i.add_argument("--json", action="store_true", help="compact JSON on one line")
    i.set_defaults(fn=cmd_inspect)

    c = sub.add_parser("print-config", help="print the resolved config of an experiment")
    c.add_argument("config")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=cmd_print_config)

    g = sub.add_parser("grid", help="run a grid of experiments, one process per run; see experiments/grids",
                       description="Run every unfinished run of a grid: locally N at a time or on SLURM "
                       "(through submitit). Finished runs are skipped, the others run again; preempted "
                       "or interrupted ones resume. State and logs in the grid root (default "
                       "runs/grids/NAME).")
    g.add_argument("grid", nargs="?", help="a grid YAML, or the name of a predefined grid")
    g.add_argument("--dry-run", action="store_true", help="print the runs and their exact commands")
    g.add_argument("--list", action="store_true", help="list the predefined grids")
    g.add_argument("--status", action="store_true",
                   help="print every run's record (refreshed from SLURM) and exit")
    g.add_argument("--reproduce", nargs="?", const="", metavar="CELL",
                   help="run one seed of CELL (default: the first cell) again at this commit into "
                   "--root (default runs/reproduce/NAME) and print results/NAME's values vs now")
    g.add_argument("--root", help="grid root folder (default runs/grids/NAME)")
    g.add_argument("--launcher", choices=["local", "slurm"],
                   help="default: the grid's launcher.name, else local")
    g.add_argument("--parallel", type=at_least(1),
                   help="local: cells at once (default: launcher.parallel, else 1)")
    g.add_argument("--threads", type=at_least(1),
                   help="intra-op threads per cell (default: cores / parallel - 1)")
    g.add_argument("--launcher-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a `launcher:` key, e.g. partition=gpu time=240 gpus_per_node=4")
    g.add_argument("--allow-dirty", action="store_true",
                   help="launch from a checkout with uncommitted changes (not for results)")
    g.set_defaults(fn=cmd_grid)

    m = sub.add_parser("compare", help="summarize runs: results/GRID/runs.csv, summary.csv, paired.csv, "
                       "summary.md, plots (95%% Student-t intervals over seeds)")
    m.add_argument("targets", nargs="+", help="run folders, a grid root, a grid YAML / name, or a "
                   "runs.csv written by compare (re-analysed without the run folders)")
    m.add_argument("--out", help="output folder (default results/NAME; a runs.csv: its folder)")
    m.add_argument("--ref", metavar="CELL", help="reference cell of the paired differences "
                   "(default: the grid's first cell)")
    m.add_argument("--power-law", help="fit METRIC = a * params^-alpha (default: the grid's power_law)")
    m.add_argument("--scaling", help="fit METRIC = E + A/N^alpha + B/D^beta over the runs' sizes and "
                   "budgets, with intervals, a held-out check and the IsoFLOP view (default: the "
                   "grid's scaling)")
    m.set_defaults(fn=cmd_compare)

    gen = sub.add_parser(
        "generate", help="continue text after an image (what does the image say?)",
        description="KV-cached decoding from a checkpoint (file, sharded folder or export folder). "
        "The prompt is [--before] IMAGE [--prompt]; for the glyph models: "
        "--before 'Read the text in the image.' --prompt 'The text says \"'. With --data, each "
        "document up to its last image, then --prompt.")
    gen.add_argument("checkpoint")
    gen.add_argument("--image", help="one image: prints the continuation")
    gen.add_argument("--images", help="a folder of images -> JSONL (--out)")
    gen.add_argument("--data", help="shards of a mixed split (folder made by prep) -> JSONL (--out)")
    gen.add_argument("--out", help="JSONL file: input, prompt, output, tokens, stop, seconds")
    gen.add_argument("--before", default="", help="text before the image")
    gen.add_argument("--prompt", default="", help="text after the image, continued by the model")
    gen.add_argument("--max-new-tokens", type=at_least(1), default=64)
    gen.add_argument("--temperature", type=in_range(0, 100), default=0.0,
                     help="0 = greedy (images: 0 means 1.0, plain sampling)")
    gen.add_argument("--top-k", type=at_least(1), help="sample among the k likeliest (>= 1)")
    gen.add_argument("--top-p", type=in_range(0, 1, low_open=True),
                     help="sample from the smallest set holding this much probability, in (0, 1]")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=at_least(1), default=16)
    gen.add_argument("--tokenizer", help="tokenizer.json, for checkpoints that do not hold one")
    gen.add_argument("--sample", type=at_least(1), help="dense checkpoints: draw N whole images (after "
                     "--prompt for mixed models) -> OUT/samples.png, samples.json")
    gen.add_argument("--complete", help="dense checkpoints: keep the top rows of IMAGE, sample the rest")
    gen.add_argument("--keep-rows", type=at_least(0), help="--complete: pixel rows kept, rounded up to whole "
                     "window rows (default: half the image)")
    gen.set_defaults(fn=cmd_generate)

    ev = sub.add_parser("eval", help="evaluate a checkpoint by generation (captions)")
    evs = ev.add_subparsers(dest="what", required=True)
    cap = evs.add_parser(
        "captions", help="greedy captions vs the truth: exact match, CER, answer NLL, image-blind controls",
        description="For every document whose text continues after its last image: prompt = the "
        "document up to that image + --prefix; answer = the true text after the prefix, cut at "
        "--end. Writes RUN/eval/captions.json, .md, .png and adds eval/* to RUN/summary.json.")
    cap.add_argument("checkpoint")
    cap.add_argument("--data", help="mixed shards (default: the run's data.val)")
    cap.add_argument("--prefix", help="text shared by all answers (default: the run's eval.prefix)")
    cap.add_argument("--end", help="answers are cut at this marker ('' = whole text; default: "
                     "the run's eval.end)")
    cap.add_argument("--train", help="mixed shards the image-blind controls and seen/unseen come "
                     "from (default: the run's data.train)")
    cap.add_argument("--out", help="output folder (default RUN/eval)")
    cap.add_argument("--batch-size", type=at_least(1), default=16)
    cap.add_argument("--limit", type=at_least(1), help="only the first N documents")
    cap.add_argument("--max-new-tokens", type=at_least(1), help="default: longest true answer + 4")
    cap.add_argument("--tokenizer", help="tokenizer.json, for checkpoints that do not hold one")
    cap.set_defaults(fn=cmd_eval)

    bn = sub.add_parser("bench", help="measure speed; writes CSV + Markdown (default results/bench)")
    bns = bn.add_subparsers(dest="what", required=True)
    for what, text in (
        ("utilization", "training FLOP/s vs this device's peak matmul rate (3 sizes x fp32/bf16)"),
        ("overhead", "Lightning's Trainer.fit vs the bare training loop"),
        ("data", "batches/s of the training loader (1, 2 workers) vs what training consumes"),
        ("scaling", "step time per pixel vs image size for each attention variant"),
        ("profile", "torch.profiler of bare fp32 training steps: the ops with the most self time"),
        ("decoding", "tokens/s of KV-cached vs uncached decoding"),
        ("all", "all of the above (about 3-5 minutes on 2 CPU cores)"),
        ("ab", "interleaved A/B of the bare quickstart step, one change at a time, each arm "
               "in a fresh process (bench/ab.py; about 4 minutes)"),
        ("paper", "the paper configuration in bf16: step time, memory, MFU, window kernels, "
                  "CPU-vs-device loss (experiments/bench_gpu.sh; --config a paper config)"),
    ):
        b = bns.add_parser(what, help=text)
        b.add_argument("--config", default="experiments/quickstart.yaml", help="experiment measured")
        b.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="config override (repeatable), e.g. --set data.batch_size=4")
        b.add_argument("--new-tokens", type=at_least(1), default=64, help="decoding: tokens generated")
        b.add_argument("--threads", type=at_least(1), help="torch intra-op threads (default: torch's)")
        b.add_argument("--device", help="cpu | cuda (default: cuda when present)")
        b.add_argument("--out", default="results/bench")
        b.add_argument("--allow-dirty", action="store_true",
                       help="run with uncommitted changes (tables say -dirty; not results)")
        b.set_defaults(fn=cmd_bench)

    k = sub.add_parser("convert-ckpt", help="sharded fsdp checkpoint folder -> single .ckpt file")
    k.add_argument("checkpoint")
    k.add_argument("--out", help="output file (default: next to the folder, NAME-single.ckpt; "
                   "--resume never picks such copies, they hold no optimizer state)")
    k.set_defaults(fn=cmd_convert)

    x = sub.add_parser("export", help="checkpoint -> folder: model.safetensors (no pickle), config.yaml, "
                       "tokenizer.json, pixword.json; generate, eval and validate take it as a checkpoint")
    x.add_argument("checkpoint", help=".ckpt file, sharded fsdp folder or another export folder")
    x.add_argument("--out", required=True, help="the folder to write (new or empty)")
    x.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    x.set_defaults(fn=cmd_export)
    return p
