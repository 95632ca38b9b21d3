"""`pixword bench`: measured speed, written as CSV + Markdown under results/bench/.

- `decoding`: word tokens/s of KV-cached decoding (`generate.generate`) against the uncached
  reference loop (`generate.generate_uncached`, full forward per token), for a prompt of the
  glyph documents' shape (prompt text, one image, the answer prefix) at an experiment's size.
  The model is freshly initialized: speed does not depend on the weights, and `stop=False`
  makes every run produce exactly `new_tokens` tokens.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from pixword_lit.config import load_config
from pixword_lit.generate import Sampling, generate, generate_uncached
from pixword_lit.image import image_windows
from pixword_lit.model import PixWordModel
from pixword_lit.tokens import Vocab


def decoding(config: str, new_tokens: int = 64, n_words: int = 1000, repeats: int = 3,
             threads: int | None = None) -> list[dict]:
    from pixword_lit.build import folding_from_state

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config, [])
    m = cfg.model
    folding = folding_from_state({"name": "uniform", "factor": m.folding.get("factor", 16)})
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
    cols = list(rows[0])
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    md = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    return [out / f"{name}.csv", out / f"{name}.md"]
