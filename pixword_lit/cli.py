"""The `pixword` command: prep | fit | validate | generate | eval | inspect | print-config
(and grid, compare, bench, convert-ckpt). Each subcommand has --help."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _fit(a) -> int:
    from pixword_lit.fit.preempt import PREEMPTED_EXIT, Preempted
    from pixword_lit.fit.report import print_table
    from pixword_lit.fit.train import fit
    from pixword_lit.system.config import load_config

    cfg = load_config(a.config, a.overrides)
    try:
        summary = fit(cfg, resume=a.resume, overwrite=a.overwrite, anyway=a.resume_anyway)
    except Preempted as e:
        print(f"pixword fit: {e}; exit code {PREEMPTED_EXIT}; continue with --resume last",
              file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    if summary is not None:  # rank 0 only
        print_table(summary)
    return 0


def _validate(a) -> int:
    from pixword_lit.fit.train import validate

    print(json.dumps(validate(a.checkpoint, a.overrides), indent=2))
    return 0


def _inspect(a) -> int:
    from pixword_lit.data.inspect_image import inspect_path

    out = inspect_path(a)
    print(json.dumps(out) if a.json else json.dumps(out, indent=1))
    return 0


def _print_config(a) -> int:
    from pixword_lit.system.config import load_config, to_yaml

    print(to_yaml(load_config(a.config, a.overrides)), end="")
    return 0


def _convert(a) -> int:
    from pathlib import Path

    from pixword_lit.system.checkpoints import single_file_checkpoint

    out = single_file_checkpoint(Path(a.checkpoint), Path(a.out) if a.out else None)
    print(f"wrote {out}")
    return 0


def _generate(a) -> int:
    from pathlib import Path

    from pixword_lit.infer.generate import GenerateError, Sampling
    from pixword_lit.infer.load import (
        image_prompts,
        images_in,
        load_run,
        run_prompts,
        shard_prompts,
        write_jsonl,
    )

    given = [x for x in (a.image, a.images, a.data, a.sample, a.complete) if x]
    if len(given) != 1:
        raise GenerateError("give exactly one of --image PATH, --images DIR, --data SHARDS, "
                            "--sample N, --complete IMAGE")
    if a.sample or a.complete:  # images, from a dense checkpoint
        from pixword_lit.infer.load import sample_to_files

        if not a.out:
            raise GenerateError("--sample/--complete write OUT/samples.png and samples.json: give --out DIR")
        run = load_run(a.checkpoint, a.tokenizer, words=False)
        s = Sampling(a.temperature if a.temperature > 0 else 1.0, a.top_k, None, 0, a.seed)
        rec = sample_to_files(run, a.sample or 1, a.prompt, a.complete, a.keep_rows, s, Path(a.out),
                              a.checkpoint)
        print(f"wrote {a.out}/samples.png and samples.json ({len(rec['samples'])} images; "
              f"kept window rows: {rec['kept_window_rows']})")
        return 0
    if (a.images or a.data) and not a.out:
        raise GenerateError("--images/--data write JSONL: give --out FILE")
    sampling = Sampling(a.temperature, a.top_k, a.top_p, a.max_new_tokens, a.seed)
    run = load_run(a.checkpoint, a.tokenizer)
    if a.data:
        prompts = shard_prompts(run, a.data, a.prompt)
    else:
        paths = [Path(a.image)] if a.image else images_in(a.images)
        prompts = image_prompts(run, paths, a.before, a.prompt)
    records = run_prompts(run, prompts, sampling, a.batch_size)
    if a.out:
        write_jsonl(Path(a.out), records)
        print(f"wrote {a.out} ({len(records)} generations)")
    else:
        r = records[0]
        print(r["output"] + ("" if r["stop"] == "eos" else f"  [stopped: {r['stop']}]"))
    return 0


def _eval(a) -> int:
    from pixword_lit.infer.captions import eval_captions

    r = eval_captions(a.checkpoint, a.data, a.prefix, a.end, a.out, a.batch_size, a.limit,
                      a.max_new_tokens)
    print(f"exact match {r['eval/exact_match']:.4f}  CER {r['eval/cer']:.4f}  "
          f"answer NLL {r['eval/answer_nll']:.4f} nats/token  ({r['documents']} documents)")
    for b, s in r["by_glyph_height_windows"].items():
        print(f"  glyph height {b:>9} windows: n={s['n']:4d}  "
              f"exact {s['exact_match']:.3f}  CER {s['cer']:.3f}")
    return 0


def _bench(a) -> int:
    from pathlib import Path

    import torch

    from pixword_lit.bench import run as bench

    if a.threads:
        torch.set_num_threads(a.threads)
    opts = [f"--config {a.config}", *(f"--set {x}" for x in a.set or [])]
    opts += [f"--{k} {getattr(a, k)}" for k in ("threads", "device") if getattr(a, k)]
    if a.what in ("decoding", "all"):
        opts.append(f"--new-tokens {a.new_tokens}")
    header = bench.provenance(f"pixword bench {a.what} {' '.join(opts)}", a.allow_dirty)
    if a.what == "decoding":
        rows = bench.decoding(a.config, a.new_tokens)
        for f in bench.write_table(rows, Path(a.out), "decoding", header):
            print(f"wrote {f}")
        for r in rows:
            print(f"{r['decoding']:>9}: {r['tokens_per_s']:9.1f} tokens/s "
                  f"({r['seconds']} s for {r['new_tokens']})")
        return 0
    for f in bench.run(a.what, a, header):
        print(f"wrote {f}")
    return 0


def _grid(a) -> int:
    from pathlib import Path

    from pixword_lit.grid.launch import cell_threads, launcher_args, launcher_of, run_grid
    from pixword_lit.grid.spec import dry_run, list_grids, load_grid
    from pixword_lit.grid.status import status_table

    if a.list:
        list_grids()
        return 0
    if not a.grid:
        print("pixword grid: error: give a grid file or name, or --list", file=sys.stderr)
        return 2
    grid = load_grid(a.grid)
    if a.threads:
        grid.threads = a.threads
    opts = dict(kv.split("=", 1) for kv in a.launcher_opt if "=" in kv)
    bad = [kv for kv in a.launcher_opt if "=" not in kv]
    if bad:
        print(f"pixword grid: error: --launcher-opt {bad[0]!r} is not KEY=VALUE", file=sys.stderr)
        return 2
    from omegaconf import OmegaConf  # values typed as in YAML: 4 -> int, true -> bool

    opts = {k: OmegaConf.to_container(OmegaConf.from_dotlist([f"v={v}"]))["v"] for k, v in opts.items()}
    spec = launcher_of(grid, name=a.launcher, parallel=a.parallel, **opts)
    root = Path(a.root) if a.root else None
    if a.status:
        counts = status_table(grid, root)
    elif a.dry_run:
        counts = dry_run(grid, root or grid.default_root(), cell_threads(grid, spec),
                         extra=launcher_args(spec))
    else:
        try:
            counts = run_grid(grid, root, spec, allow_dirty=a.allow_dirty)
        except KeyboardInterrupt:
            print("pixword grid: interrupted; running cells are marked finished or interrupted "
                  "in grid_state.json, and the next launch picks them up", file=sys.stderr)
            return 130
    return 1 if counts.get("failed") or counts.get("invalid") else 0


def _compare(a) -> int:
    from pathlib import Path

    from pixword_lit.grid.compare import collect, write_results

    col = collect(a.targets)
    for f in write_results(col, Path(a.out or Path("results") / col.name), a.power_law)["files"]:
        print(f"wrote {f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixword", description=__doc__)
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
                       description="Run every unfinished run of a grid: locally N at a time or on SLURM "
                       "(through submitit). Finished runs are skipped, the others run again; preempted "
                       "or interrupted ones resume. State and logs in the grid root (default "
                       "runs/grids/NAME).")
    g.add_argument("grid", nargs="?", help="a grid YAML, or the name of a predefined grid")
    g.add_argument("--dry-run", action="store_true", help="print the runs and their exact commands")
    g.add_argument("--list", action="store_true", help="list the predefined grids")
    g.add_argument("--status", action="store_true",
                   help="print every run's record (refreshed from SLURM) and exit")
    g.add_argument("--root", help="grid root folder (default runs/grids/NAME)")
    g.add_argument("--launcher", choices=["local", "slurm"],
                   help="default: the grid's launcher.name, else local")
    g.add_argument("--parallel", type=int, help="local: cells at once (default: launcher.parallel, else 1)")
    g.add_argument("--threads", type=int, help="intra-op threads per cell (default: cores / parallel - 1)")
    g.add_argument("--launcher-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a `launcher:` key, e.g. partition=gpu time=240 gpus_per_node=4")
    g.add_argument("--allow-dirty", action="store_true",
                   help="launch from a checkout with uncommitted changes (not for results)")
    g.set_defaults(fn=_grid)

    m = sub.add_parser("compare", help="summarize runs: results/GRID/summary.csv, summary.md, plots")
    m.add_argument("targets", nargs="+", help="run folders, a grid root, or a grid YAML / name")
    m.add_argument("--out", help="output folder (default results/NAME)")
    m.add_argument("--power-law", help="fit METRIC = a * params^-alpha (default: the grid's power_law)")
    m.set_defaults(fn=_compare)

    gen = sub.add_parser(
        "generate", help="continue text after an image (what does the image say?)",
        description="KV-cached decoding from a checkpoint (file or sharded folder). The prompt is "
        "[--before] IMAGE [--prompt]; for the glyph models: --before 'Read the text in the image.' "
        "--prompt 'The text says \"'. With --data, each document up to its last image, then --prompt.")
    gen.add_argument("checkpoint")
    gen.add_argument("--image", help="one image: prints the continuation")
    gen.add_argument("--images", help="a folder of images -> JSONL (--out)")
    gen.add_argument("--data", help="shards of a mixed split (folder made by prep) -> JSONL (--out)")
    gen.add_argument("--out", help="JSONL file: input, prompt, output, tokens, stop, seconds")
    gen.add_argument("--before", default="", help="text before the image")
    gen.add_argument("--prompt", default="", help="text after the image, continued by the model")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="0 = greedy (images: 0 means 1.0, plain sampling)")
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--tokenizer", help="tokenizer.json, for checkpoints that do not hold one")
    gen.add_argument("--sample", type=int, help="dense checkpoints: draw N whole images (after "
                     "--prompt for mixed models) -> OUT/samples.png, samples.json")
    gen.add_argument("--complete", help="dense checkpoints: keep the top rows of IMAGE, sample the rest")
    gen.add_argument("--keep-rows", type=int, help="--complete: pixel rows kept, rounded up to whole "
                     "window rows (default: half the image)")
    gen.set_defaults(fn=_generate)

    ev = sub.add_parser("eval", help="evaluate a checkpoint by generation (captions)")
    evs = ev.add_subparsers(dest="what", required=True)
    cap = evs.add_parser(
        "captions", help="greedy captions vs the truth: exact match, CER, answer NLL",
        description="For every document whose text continues after its last image: prompt = the "
        "document up to that image + --prefix; answer = the true text after the prefix, cut at "
        "--end. Writes RUN/eval/captions.json, .md, .png and adds eval/* to RUN/summary.json.")
    cap.add_argument("checkpoint")
    cap.add_argument("--data", help="mixed shards (default: the run's data.val)")
    cap.add_argument("--prefix", default='The text says "', help="text shared by all answers")
    cap.add_argument("--end", default='"', help="answers are cut at this marker ('' = whole text)")
    cap.add_argument("--out", help="output folder (default RUN/eval)")
    cap.add_argument("--batch-size", type=int, default=16)
    cap.add_argument("--limit", type=int, help="only the first N documents")
    cap.add_argument("--max-new-tokens", type=int, help="default: longest true answer + 4")
    cap.set_defaults(fn=_eval)

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
               "in a fresh process (bench_ab.py; about 4 minutes)"),
        ("paper", "the paper configuration in bf16: step time, memory, MFU, window kernels, "
                  "CPU-vs-device loss (experiments/bench_gpu.sh; --config a paper config)"),
    ):
        b = bns.add_parser(what, help=text)
        b.add_argument("--config", default="experiments/quickstart.yaml", help="experiment measured")
        b.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="config override (repeatable), e.g. --set data.batch_size=4")
        b.add_argument("--new-tokens", type=int, default=64, help="decoding: tokens generated")
        b.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
        b.add_argument("--device", help="cpu | cuda (default: cuda when present)")
        b.add_argument("--out", default="results/bench")
        b.add_argument("--allow-dirty", action="store_true",
                       help="run with uncommitted changes (tables say -dirty; not results)")
        b.set_defaults(fn=_bench)

    k = sub.add_parser("convert-ckpt", help="sharded fsdp checkpoint folder -> single .ckpt file")
    k.add_argument("checkpoint")
    k.add_argument("--out", help="output file (default: next to the folder, NAME-single.ckpt; "
                   "--resume never picks such copies, they hold no optimizer state)")
    k.set_defaults(fn=_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PIXWORD_DEBUG", "") not in ("", "0")
    argv = [x for x in argv if x != "--debug"]
    if argv and argv[0] == "prep":
        from data_prep.cli import main as prep_main

        return prep_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after --options too
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    from pixword_lit.data.shards import DataError
    from pixword_lit.infer.generate import GenerateError
    from pixword_lit.system.checkpoints import CheckpointError
    from pixword_lit.system.config import ConfigError

    try:
        return args.fn(args)
    except (ConfigError, DataError, CheckpointError, GenerateError) as e:
        if debug:
            raise
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"pixword {args.cmd}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
