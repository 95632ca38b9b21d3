"""What each `pixword` subcommand does with its parsed arguments: read them, call the library
(which never sees the argparse namespace), print the outcome. -> the exit code."""

from __future__ import annotations

import json
import sys


def cmd_fit(a) -> int:
    from pixword_lit.system.config import load_config

    cfg = load_config(a.config, a.overrides)  # a bad config fails before Lightning loads (~5 s)
    from pixword_lit.fit.preempt import PREEMPTED_EXIT, Preempted
    from pixword_lit.fit.report import print_table
    from pixword_lit.fit.train import fit

    try:
        summary = fit(cfg, resume=a.resume, overwrite=a.overwrite, anyway=a.resume_anyway)
    except Preempted as e:
        print(f"pixword fit: {e}; exit code {PREEMPTED_EXIT}; continue with --resume last",
              file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    if summary is not None:  # rank 0 only
        print_table(summary)
    return 0


def cmd_validate(a) -> int:
    from pixword_lit.fit.train import validate

    print(json.dumps(validate(a.checkpoint, a.overrides), indent=2))
    return 0


def cmd_inspect(a) -> int:
    from pixword_lit.data.inspect_image import Geometry, inspect_path

    g = Geometry(a.image_size, a.window_size, a.fold, a.resample, a.max_seq_len)
    out = inspect_path(a.path, g, a.tokenizer, a.images)
    print(json.dumps(out) if a.json else json.dumps(out, indent=1))
    return 0


def cmd_print_config(a) -> int:
    from pixword_lit.system.config import load_config, to_yaml

    print(to_yaml(load_config(a.config, a.overrides)), end="")
    return 0


def cmd_convert(a) -> int:
    from pathlib import Path

    from pixword_lit.system.checkpoints import single_file_checkpoint

    out = single_file_checkpoint(Path(a.checkpoint), Path(a.out) if a.out else None)
    print(f"wrote {out}")
    return 0


def cmd_export(a) -> int:
    from pixword_lit.infer.export import export
    from pixword_lit.provenance import git_commit

    out = export(a.checkpoint, a.out, a.overwrite, git_commit())
    print(f"wrote {out}: model.safetensors, config.yaml, pixword.json"
          + (", tokenizer.json" if (out / "tokenizer.json").exists() else ""))
    return 0


def cmd_generate(a) -> int:
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
        from pixword_lit.infer.load import images_to_files

        if not a.out:
            raise GenerateError("--sample/--complete write OUT/samples.png and samples.json: give --out DIR")
        run = load_run(a.checkpoint, a.tokenizer, words=False)
        s = Sampling(a.temperature if a.temperature > 0 else 1.0, a.top_k, None, 0, a.seed)
        rec = images_to_files(run, a.sample or 1, a.prompt, a.complete, a.keep_rows, s, Path(a.out),
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


def cmd_eval(a) -> int:
    from pixword_lit.infer.captions import eval_captions

    r = eval_captions(a.checkpoint, a.data, a.prefix, a.end, a.out, a.batch_size, a.limit,
                      a.max_new_tokens, a.train, a.tokenizer)
    print(f"exact match {r['eval/exact_match']:.4f}  CER {r['eval/cer']:.4f}  "
          f"answer NLL {r['eval/answer_nll']:.4f} nats/token  ({r['documents']} documents)")
    print(f"image-blind controls (train: {r['train']}): answer NLL {r['eval/blind_nll']:.4f} "
          f"nats/token, exact match {r['eval/blind_exact_match']:.4f} (most frequent answer), "
          f"chance {r['eval/chance_exact_match']:.4f}")
    for k in ("seen", "unseen"):
        g = r["by_seen"][k]
        print(f"  {k:>6} answers: n={g['n']:4d}  exact {g['exact_match']:.3f}  CER {g['cer']:.3f}  "
              f"answer NLL {g['answer_nll']:.3f}  blind NLL {g['blind_nll']:.3f}")
    for b, s in r["by_glyph_height_windows"].items():
        print(f"  glyph height {b:>9} windows: n={s['n']:4d}  "
              f"exact {s['exact_match']:.3f}  CER {s['cer']:.3f}")
    return 0


def cmd_bench(a) -> int:
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
    for f in bench.run(a.what, a.config, a.set or [], Path(a.out), header, device=a.device,
                       threads=a.threads, new_tokens=a.new_tokens):
        print(f"wrote {f}")
    return 0


def cmd_grid(a) -> int:
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
    if a.reproduce is not None:
        from pixword_lit.grid.reproduce import reproduce

        return 1 if reproduce(grid, a.reproduce, root, spec, a.allow_dirty)["failed"] else 0
    if a.status:
        counts = status_table(grid, root)
    elif a.dry_run:
        counts = dry_run(grid, root or grid.default_root(), cell_threads(grid, spec),
                         extra=launcher_args(spec))
    else:
        try:
            counts = run_grid(grid, root, spec, allow_dirty=a.allow_dirty,  # lines as they happen
                             echo=lambda *m: print(*m, flush=True))
        except KeyboardInterrupt:
            where = root or grid.default_root()
            print(f"pixword grid: interrupted: the cells that were running are marked above "
                  f"(finished, or interrupted: resumed from their last checkpoint next time); "
                  f"continue with: pixword grid {a.grid} --root {where}", file=sys.stderr)
            return 130
    return 1 if counts.get("failed") or counts.get("invalid") else 0


def cmd_compare(a) -> int:
    from pathlib import Path

    from pixword_lit.grid.compare import collect, default_out, write_results

    col = collect(a.targets)
    for f in write_results(col, Path(a.out) if a.out else default_out(col), a.power_law, a.ref,
                           a.scaling)["files"]:
        print(f"wrote {f}")
    return 0
