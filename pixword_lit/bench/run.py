"""`pixword bench`: measured speed, written as CSV + Markdown under results/bench/.

Every table's header states the command, the commit, the machine (device, torch version,
threads, load average at the start: a load above the thread count means the machine was
shared) and refuses a tree with uncommitted changes outside results/bench/ (results come
from commits; --allow-dirty marks the commit `-dirty`). Training benchmarks are in
bench/training.py: utilization, overhead, data, scaling; `all` runs every one.

- `decoding`: word tokens/s of KV-cached decoding (`generate.generate`) against the uncached
  reference loop (`generate.generate_uncached`, full forward per token), for a prompt of the
  glyph documents' shape (prompt text, one image, the answer prefix) at an experiment's size.
  The model is freshly initialized: speed does not depend on the weights, and `stop=False`
  makes every run produce exactly `new_tokens` tokens.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import torch

from pixword_lit.data.elements import image_windows
from pixword_lit.fit.memory import keep_freed_memory
from pixword_lit.infer.generate import Sampling, generate, generate_uncached
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.pixword import PixWordModel
from pixword_lit.model.tokens import Vocab
from pixword_lit.system.config import load_config


def decoding(config: str, new_tokens: int = 64, n_words: int = 1000, repeats: int = 3,
             threads: int | None = None) -> list[dict]:
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config, [])
    m = cfg.model
    folding = UniformFolding(m.folding.get("factor", 16))
    vocab = Vocab(n_words, folding.n_pix)
    torch.manual_seed(0)
    model = PixWordModel(m, vocab, folding).eval()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (m.image_size // 2, m.image_size, 3), dtype=np.uint8)
    prompt = [np.arange(6, 14), image_windows(img, m.image_size, m.window_size, folding, vocab),
              np.arange(20, 26)]
    s = Sampling(max_new_tokens=new_tokens, stop=False)
    rows = []
    for name, fn in (("cached", lambda: generate(model, [prompt], vocab, 4096, s)[0]),
                     ("uncached", lambda: generate_uncached(model, prompt, vocab, 4096, s))):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            g = fn()
            times.append(time.perf_counter() - t0)
            assert len(g.tokens) == new_tokens
        best = min(times)
        rows.append({"decoding": name, "new_tokens": new_tokens, "seconds": round(best, 4),
                     "tokens_per_s": round(new_tokens / best, 1), "threads": torch.get_num_threads(),
                     "params": sum(p.numel() for p in model.parameters()), "config": config})
    speedup = rows[1]["seconds"] / rows[0]["seconds"]
    for r in rows:
        r["cached_speedup"] = round(speedup, 2)
    return rows


def write_table(rows: list[dict], out: Path, name: str, header: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))  # rows may differ in columns
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols, restval="")
        w.writeheader()
        w.writerows(rows)
    md = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    return [out / f"{name}.csv", out / f"{name}.md"]


BENCHES = ("utilization", "overhead", "data", "scaling", "profile", "decoding")  # `all`; `ab`, `paper` apart


def provenance(command: str, allow_dirty: bool) -> str:
    """Header line of every table; refuses uncommitted changes outside results/bench/."""
    from pixword_lit.provenance import machine, require_clean

    commit = require_clean(allow_dirty, "benchmark results", exclude="results/bench")
    commit = commit or "unknown (not a git checkout)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"`{command}` at commit {commit} on {machine()}, "
            f"{torch.get_num_threads()} torch threads, load average {load:.2f} at the start")


def run(what: str, config: str, over: list[str], out: Path, header: str, device: str | None = None,
        threads: int | None = None, new_tokens: int = 64) -> list[Path]:
    """One benchmark (or `all`) of `config` with dotted overrides `over`, tables written under
    `out` -> the files written."""
    from pixword_lit.bench import training as bt

    keep_freed_memory()  # as training does (train.fit)
    out.mkdir(parents=True, exist_ok=True)
    names = BENCHES if what == "all" else (what,)
    files, consume = [], None
    for name in names:
        t0 = time.perf_counter()
        if name == "utilization":
            rows = bt.utilization(config, over, device=device)
            consume = next(r["step_s"] for r in rows if r["model"] == "quickstart"
                           and r["dtype"] == "fp32")
        elif name == "overhead":
            rows = bt.overhead(config, over, device=device)
        elif name == "data":
            rows = bt.data(config, over, consume_step_s=consume, device=device)
        elif name == "scaling":
            rows = bt.scaling(config, over, device=device)
            bt.plot_scaling(rows, out / "scaling.png")
            files.append(out / "scaling.png")
        elif name == "profile":
            rows = bt.profile(config, over, device=device)
        elif name == "ab":
            from pixword_lit.bench.ab import ab

            rows = ab(config, over, threads=threads)
        elif name == "paper":
            from pixword_lit.bench.gpu import paper

            rows = paper(config, over, device=device)
        else:
            rows = decoding(config, new_tokens)
        files += write_table(rows, out, name, header + f"; {name}: {time.perf_counter() - t0:.0f} s")
        for r in rows:
            print(name, r, flush=True)
    return files
