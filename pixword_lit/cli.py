"""The `pixword` command: prep | fit | validate | inspect | print-config (and grid, compare,
convert-ckpt). Each subcommand has --help."""

from __future__ import annotations

import argparse
import json
import sys


def _fit(a) -> int:
    from pixword_lit.config import load_config
    from pixword_lit.control import PREEMPTED_EXIT, Preempted
    from pixword_lit.report import print_table
    from pixword_lit.train import fit

    cfg = load_config(a.config, a.overrides)
    try:
        summary = fit(cfg, resume=a.resume, overwrite=a.overwrite)
    except Preempted as e:
        print(f"pixword fit: {e}; exit code {PREEMPTED_EXIT}; continue with --resume last",
              file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    if summary is not None:  # rank 0 only
        print_table(summary)
    return 0


def _validate(a) -> int:
    from pixword_lit.train import validate

    print(json.dumps(validate(a.checkpoint, a.overrides), indent=2))
    return 0


def _inspect(a) -> int:
    from pixword_lit.inspect import inspect_path

    out = inspect_path(a)
    print(json.dumps(out) if a.json else json.dumps(out, indent=1))
    return 0


def _print_config(a) -> int:
    from pixword_lit.config import load_config, to_yaml

    print(to_yaml(load_config(a.config, a.overrides)), end="")
    return 0


def _convert(a) -> int:
    from pathlib import Path

    from pixword_lit.parallel import single_file_checkpoint

    out = single_file_checkpoint(Path(a.checkpoint), Path(a.out) if a.out else None)
    print(f"wrote {out}")
    return 0


def _grid(a) -> int:
    from pathlib import Path

    from pixword_lit.grid import list_grids, load_grid, run_grid

    if a.list:
        list_grids()
        return 0
    if not a.grid:
        print("pixword grid: error: give a grid file or name, or --list", file=sys.stderr)
        return 2
    counts = run_grid(load_grid(a.grid), Path(a.root) if a.root else None, dry_run=a.dry_run)
    return 1 if counts.get("failed") or counts.get("invalid") else 0


def _compare(a) -> int:
    from pathlib import Path

    from pixword_lit.compare import collect, write_results

    col = collect(a.targets)
    for f in write_results(col, Path(a.out or Path("results") / col.name), a.power_law)["files"]:
        print(f"wrote {f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixword", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prep", add_help=False,
                   help="build WebDataset shards (images | mixed | glyphs); see `pixword prep --help`")

    f = sub.add_parser("fit", help="train an experiment",
                       description="Train from an experiment YAML; dotted overrides follow it, "
                       "e.g. `pixword fit experiments/quickstart.yaml trainer.max_steps=50 model.dim=128`.")
    f.add_argument("config")
    f.add_argument("overrides", nargs="*", help="key=value (dotted config keys)")
    f.add_argument("--resume", help="'last' (newest complete checkpoint of the run) or a checkpoint path")
    f.add_argument("--overwrite", action="store_true",
                   help="start again in a run folder that has checkpoints")
    f.set_defaults(fn=_fit)

    v = sub.add_parser("validate", help="evaluate a checkpoint (.ckpt file or sharded fsdp folder)")
    v.add_argument("checkpoint")
    v.add_argument("overrides", nargs="*", help="key=value, e.g. data.val=other/val")
    v.set_defaults(fn=_validate)

    i = sub.add_parser("inspect", help="show exactly what the model sees for an image or a mixed document")
    i.add_argument("path", help="an image, or a .txt document in the mixed format")
    i.add_argument("--images", help="image folder for a document's <|image|>NAME<|/image|> references")
    i.add_argument("--image-size", type=int, default=224)
    i.add_argument("--window-size", type=int, default=16)
    i.add_argument("--fold", type=int, default=16, help="uniform fold factor f")
    i.add_argument("--tokenizer", help="tokenizer.json for documents (default: special tokens only)")
    i.add_argument("--max-seq-len", type=int, default=1024)
    i.add_argument("--json", action="store_true", help="compact JSON on one line")
    i.set_defaults(fn=_inspect)

    c = sub.add_parser("print-config", help="print the resolved config of an experiment")
    c.add_argument("config")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=_print_config)

    g = sub.add_parser("grid", help="run a grid of experiments, one process per run; see experiments/grids",
                       description="Run every run of a grid in turn; finished runs are skipped, failed "
                       "ones retried. State and logs in the grid root (default runs/grids/NAME).")
    g.add_argument("grid", nargs="?", help="a grid YAML, or the name of a predefined grid")
    g.add_argument("--dry-run", action="store_true", help="print the runs and their exact commands")
    g.add_argument("--list", action="store_true", help="list the predefined grids")
    g.add_argument("--root", help="grid root folder (default runs/grids/NAME)")
    g.set_defaults(fn=_grid)

    m = sub.add_parser("compare", help="summarize runs: results/GRID/summary.csv, summary.md, plots")
    m.add_argument("targets", nargs="+", help="run folders, a grid root, or a grid YAML / name")
    m.add_argument("--out", help="output folder (default results/NAME)")
    m.add_argument("--power-law", help="fit METRIC = a * params^-alpha (default: the grid's power_law)")
    m.set_defaults(fn=_compare)

    k = sub.add_parser("convert-ckpt", help="sharded fsdp checkpoint folder -> single .ckpt file")
    k.add_argument("checkpoint")
    k.add_argument("--out", help="output file (default: next to the folder, NAME-single.ckpt; "
                   "--resume never picks such copies, they hold no optimizer state)")
    k.set_defaults(fn=_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prep":
        from data_prep.cli import main as prep_main

        return prep_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after --options too
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    from pixword_lit.config import ConfigError
    from pixword_lit.data import DataError

    try:
        return args.fn(args)
    except (ConfigError, DataError) as e:
        print(f"pixword {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
