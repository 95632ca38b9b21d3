"""compare's tables: runs.csv (one row per run, so a committed study re-analyses from its
committed files alone), summary.csv (one row per cell), paired.csv (each cell minus the
reference cell, seed by seed) and summary.md.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from pixword_lit.grid.stats import LEVEL

METRICS = ["val/loss", "val/pix_loss", "val/word_loss", "val/pix_acc", "val/fold_psnr",
           "val/pix_loss_all", "val/pix_nll_all", "val/bpd_folded", "val/bpd_8bit", "val/bpd_palette",
           "baseline/pix_loss", "eval/exact_match", "eval/cer", "eval/answer_nll", "eval/blind_nll",
           "eval/blind_exact_match", "eval/chance_exact_match", "eval/exact_match_seen",
           "eval/exact_match_unseen"]
COUNTS = ["params", "steps", "tokens_seen", "pix_tokens_seen", "wall_s", "pix_tokens_per_s",
          "train_flops"]
RUN_TEXT = ["git_commit", "machine"]  # runs.csv: text columns after the numbers
T_NOTE = ("t with n - 1 degrees of freedom: with 2 seeds the half-width is 12.71 x std / sqrt(2) "
          "= 8.98 std, with 3 seeds 4.30 x std / sqrt(3) = 2.48 std")


def num(x) -> float:
    if isinstance(x, bool):
        return float("nan")
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(x) if x not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def fmt_axis(v) -> str:
    if isinstance(v, dict):
        return v.get("label") or " ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


# ---- CSV -----------------------------------------------------------------------------------
def write_csv(rows: list[dict], path: Path, exact: bool = False) -> None:
    """exact: floats as Python writes them (they read back bit for bit: runs.csv), else
    to 6 significant digits."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: csv_value(r.get(k), exact) for k in keys})


def csv_value(v, exact: bool = False):
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return str(int(v)) if v.is_integer() else repr(v) if exact else f"{v:.6g}"
    return "" if v is None else v


def run_rows(runs) -> list[dict]:
    """runs.csv: cell, the axis values, seed, run, then every metric and count of the run's
    summary.json (empty where it has none), its commit, machine and why it does not count."""
    present = [m for m in METRICS if any(math.isfinite(r.value(m)) for r in runs)]
    rows = []
    for r in runs:
        row = {"cell": r.cell, **{k: fmt_axis(v) for k, v in r.axes.items()}, "seed": r.seed,
               "run": r.name}
        row.update({m: r.value(m) for m in present})
        row.update({k: r.value(k) for k in COUNTS})
        row.update({k: (r.summary or {}).get(k) for k in RUN_TEXT})
        row["error"] = (r.error or "").splitlines()[0] if r.error else ""
        rows.append(row)
    return rows


def read_runs_csv(path: Path) -> list[tuple[str, dict, dict, str | None]]:
    """runs.csv -> [(run name, axes {column: value}, summary-like dict, error or None)]."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        head = reader.fieldnames or []
        missing = [k for k in ("cell", "seed", "run", "error") if k not in head]
        if missing:
            raise ValueError(f"{path}: not a runs.csv of `pixword compare` (no column {missing[0]!r})")
        axes_cols = head[1:head.index("seed")]
        out = []
        for row in reader:
            summary = {k: num(v) for k, v in row.items() if k in METRICS or k in COUNTS}
            summary = {k: v for k, v in summary.items() if math.isfinite(v)}
            summary.update({k: row.get(k) or None for k in RUN_TEXT})
            summary["seed"] = int(row["seed"]) if row["seed"] not in ("", None) else None
            summary["status"] = "finished" if not row["error"] else "failed"
            out.append((row["run"], {k: row[k] for k in axes_cols}, summary, row["error"] or None))
    return out


# ---- Markdown ------------------------------------------------------------------------------
def pm(mean: float, half: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")


def signed(mean: float, half: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:+.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")


def _int(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:,.0f}"


def digits_of(metric: str) -> int:
    return 2 if metric == "val/fold_psnr" else 4


def markdown(col, rows: list[dict], pairs: list[dict], ref: str | None, fit: dict | None,
             plots: list[str], varying: list[str]) -> str:
    shown = [m for m in METRICS if any(math.isfinite(r[f"{m}_mean"]) for r in rows)]
    head = ["cell", "seeds", *shown, "params", "tokens seen", "pix tokens seen", "wall s",
            "pix tok/s"]
    pct = f"{LEVEL:.0%}"
    lines = [f"# Grid `{col.name}`", "",
             f"Generated by `pixword compare {col.source}` from {len(col.runs)} runs; every number "
             "is read from the runs' summary.json (final validation) and metrics.jsonl"
             + (", as recorded in runs.csv" if col.from_table else "") + ".",
             f"Metrics are mean ± the half-width of the {pct} Student-t interval over the finished "
             f"seeds of a cell ({T_NOTE}); summary.csv also holds the sample std.", ""]
    if col.spec:
        lines += [f"- base: `{col.spec['base']}`, seeds {col.spec.get('seeds')}",
                  f"- fixed: `{json.dumps(col.spec.get('fixed') or {})}`",
                  f"- axes: `{json.dumps(col.spec.get('axes') or {})}`"]
    commits = sorted({c for r in rows for c in r["git_commit"].split(";") if c})
    machines = sorted({str(r.summary["machine"]) for r in col.runs if (r.summary or {}).get("machine")})
    total = sum(num(r.summary.get("wall_s")) for r in col.runs
                if r.summary and math.isfinite(num(r.summary.get("wall_s"))))
    lines += [f"- git commit: {', '.join(f'`{c}`' for c in commits) or 'n/a'}",
              f"- machine: {'; '.join(machines) or 'n/a'}",
              f"- wall time of the finished runs, summed: {total / 60:.1f} min", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["cell"], str(r["seeds"]) + ("" if r["status"] == "finished" else f" ({r['status']})")]
        cells += [pm(r[f"{m}_mean"], r[f"{m}_ci95"], digits_of(m)) for m in shown]
        cells += [_int(r["params"]), _int(r["tokens_seen"]), _int(r["pix_tokens_seen"]),
                  _int(r["wall_s"]), _int(r["pix_tokens_per_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    if ref and varying and len(rows) > 1:
        lines += paired_markdown(rows, pairs, ref, varying)
    if fit:
        lines += ["", f"Power-law fit over {fit['n']} runs, least squares in log space: "
                  f"{fit['metric']} = {fit['a']:.4g} * params^-{fit['alpha']:.4f} "
                  f"(alpha = {fit['alpha']:.4f}, R² = {fit['r2']:.3f})."]
    failed = [r for r in rows if r["errors"]]
    if failed:
        lines += ["", "Failed or missing runs (not in the means):", ""]
        lines += [f"- {e}" for r in failed for e in r["errors"].split(" | ")]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
    if col.root:
        lines += ["The same final metrics are in TensorBoard's HParams view: "
                  f"`tensorboard --logdir {show_path(col.root)}`.", ""]
    return "\n".join(lines)


def paired_markdown(rows: list[dict], pairs: list[dict], ref: str, varying: list[str]) -> list[str]:
    by = {(p["cell"], p["metric"]): p for p in pairs}
    lines = ["", f"## Paired differences to `{ref}`", "",
             f"Each cell minus `{ref}`, seed by seed (the same seed in both), then mean ± the "
             f"half-width of the {LEVEL:.0%} Student-t interval over those pairs (paired.csv). "
             "*(noise)*: the interval covers 0, so the table cannot tell the two cells apart on "
             "that metric; *(1 pair)*: no interval.", "",
             "| cell | pairs | " + " | ".join(varying) + " |", "|" + "---|" * (len(varying) + 2)]
    for r in rows:
        if r["cell"] == ref:
            continue
        cells, n = [], 0
        for m in varying:
            p = by.get((r["cell"], m))
            if p is None:
                cells.append("n/a")
                continue
            n = max(n, p["pairs"])
            note = {"within noise": " *(noise)*", "one pair": " *(1 pair)*"}.get(p["verdict"], "")
            cells.append(signed(p["diff_mean"], p["diff_ci95"], digits_of(m)) + note)
        lines.append(f"| {r['cell']} | {n} | " + " | ".join(cells) + " |")
    return lines


def show_path(p: Path) -> str:
    rel = os.path.relpath(p)
    return str(p) if rel.startswith("..") else rel
