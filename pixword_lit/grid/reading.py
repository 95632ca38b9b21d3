"""Reading by glyph height across a grid: per cell, height and answer group (all, seen,
unseen val strings), exact match and CER as a mean over seeds with a 95% Student-t interval,
and each cell's paired (same seed) difference to the reference cell; from each run's
eval/captions.json (runs trained with `eval.captions: true`, or `pixword eval captions`).

Within a run, a group's exact match is the share of its documents read exactly and its CER
the group's summed character edits over its summed answer characters (torchmetrics'
CharErrorRate, what `pixword eval captions` reports). The interval is over seeds (runs), not
documents: it says how much a cell's number moves when the model is trained again.
Heights are the captions.json buckets: the ink height after the resize to image_size, in
windows (for `prep glyphs --task reading` one bucket per drawn height).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pixword_lit.grid.stats import interval, paired
from pixword_lit.grid.tables import write_csv
from pixword_lit.infer.captions import bucket_order, scores

GROUPS = ("all", "seen", "unseen")
METRICS = ("exact_match", "cer")


def _bucket_order(b: str) -> float:
    """captions' bucket order, with the row of all heights last."""
    return math.inf if b == "all" else bucket_order(b)


def run_scores(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(bucket, group) -> scores of one run, every bucket and "all" of them."""
    buckets = sorted({r["bucket"] for r in records}, key=_bucket_order)
    out = {}
    for b in [*buckets, "all"]:
        in_b = [r for r in records if b == "all" or r["bucket"] == b]
        for g in GROUPS:
            sel = [r for r in in_b if g == "all" or bool(r["seen"]) == (g == "seen")]
            if sel:
                out[(b, g)] = scores([(r["prediction"], r["answer"]) for r in sel])
    return out


def _per_seed(runs) -> dict[str, dict[int, dict]]:
    """cell -> seed -> run_scores, for the finished runs that have eval/captions.json."""
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        f = Path(r.dir) / "eval" / "captions.json"
        if r.error is None and f.exists():
            out.setdefault(r.cell, {})[r.seed] = run_scores(json.loads(f.read_text())["records"])
    return out


def reading_rows(runs, ref: str | None) -> list[dict]:
    """One row per (cell, height, group): documents per seed, each metric's mean and 95%
    interval over seeds, and (cells other than `ref`) the paired difference to `ref`."""
    per = _per_seed(runs)
    keys = sorted({k for seeds in per.values() for s in seeds.values() for k in s},
                  key=lambda k: (_bucket_order(k[0]), GROUPS.index(k[1])))
    rows = []
    for cell, seeds in per.items():
        for b, g in keys:
            got = {s: sc[(b, g)] for s, sc in seeds.items() if (b, g) in sc}
            if not got:
                continue
            row = {"cell": cell, "height_windows": b, "answers": g, "seeds": len(got),
                   "docs_per_seed": round(sum(x["n"] for x in got.values()) / len(got), 1)}
            for m in METRICS:
                i = interval([x[m] for x in got.values()])
                row[f"{m}_mean"], row[f"{m}_low95"], row[f"{m}_high95"] = i.mean, i.low, i.high
            base = {s: sc[(b, g)] for s, sc in per.get(ref, {}).items() if (b, g) in sc}
            if ref is not None and cell != ref and base:
                for m in METRICS:
                    d = paired({s: x[m] for s, x in got.items()}, {s: x[m] for s, x in base.items()})
                    row[f"{m}_diff"], row[f"{m}_diff_low95"], row[f"{m}_diff_high95"] = d.mean, d.low, d.high
                    row[f"{m}_verdict"] = {None: "one pair", True: "within noise",
                                           False: "differs"}[d.covers_zero]
            rows.append(row)
    return rows


def plot_by_height(rows: list[dict], out: Path, title: str = "") -> Path | None:
    """Exact match and CER per height (all answers), one line per cell: the mean over seeds,
    error bars its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["answers"] == "all" and r["height_windows"] != "all"]
    if not rows:
        return None
    buckets = sorted({r["height_windows"] for r in rows}, key=_bucket_order)
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, m in zip(axes, METRICS):
        for i, cell in enumerate(cells):
            pts = [(buckets.index(r["height_windows"]) + 0.06 * (i - (len(cells) - 1) / 2), r)
                   for r in rows if r["cell"] == cell]
            xs = [x for x, _ in pts]
            ys = [r[f"{m}_mean"] for _, r in pts]
            err = [[0 if math.isnan(r[f"{m}_low95"]) else r[f"{m}_mean"] - r[f"{m}_low95"] for _, r in pts],
                   [0 if math.isnan(r[f"{m}_high95"]) else r[f"{m}_high95"] - r[f"{m}_mean"] for _, r in pts]]
            ax.errorbar(xs, ys, yerr=err, fmt="-o", ms=3, capsize=3, color=f"C{i}", label=cell)
        ax.set_xticks(range(len(buckets)), buckets)
        ax.set(xlabel="ink height after resize (windows)", ylabel=m.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} reading by glyph height (mean over seeds, bars: 95% t interval)".strip())
    fig.tight_layout()
    path = out / "reading_by_height.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reading(runs, ref: str | None, out: Path, title: str = "") -> tuple[list[dict], list[Path]]:
    """(rows, files): reading_by_height.csv and .png in `out`; no files when no run has an
    eval/captions.json."""
    rows = reading_rows(runs, ref)
    if not rows:
        return rows, []
    write_csv(rows, out / "reading_by_height.csv")
    plot = plot_by_height(rows, out, title)
    return rows, [out / "reading_by_height.csv", *([plot] if plot else [])]


def reading_markdown(rows: list[dict]) -> str:
    """Exact match per height (rows) and cell (columns), for all, seen and unseen answers: the
    mean over seeds and its 95% interval, in percent; "" without rows."""
    if not rows:
        return ""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    lines = ["", "## Reading by glyph height", "",
             "Exact match in %, mean over seeds [95% Student-t interval over seeds]; height: ink "
             "height after the resize, in windows (reading_by_height.csv: CER and paired "
             "differences).", ""]
    for g in GROUPS:
        sel = [r for r in rows if r["answers"] == g]
        if not sel:
            continue
        lines += [f"**{g} answers**", "", "| height | " + " | ".join(cells) + " |",
                  "|---" * (len(cells) + 1) + "|"]
        for b in sorted({r["height_windows"] for r in sel}, key=_bucket_order):
            at = {r["cell"]: r for r in sel if r["height_windows"] == b}
            lines.append(f"| {b} | " + " | ".join(_pct(at.get(c)) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pct(r: dict | None) -> str:
    if r is None:
        return ""
    lo, hi = r["exact_match_low95"], r["exact_match_high95"]
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if math.isfinite(lo) else ""
    return f"{100 * r['exact_match_mean']:.1f}{ci}"
