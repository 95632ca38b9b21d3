"""Human-readable end-of-run report: the metrics table and where the outputs are."""

from __future__ import annotations

import math
from pathlib import Path

ROWS = ["val/loss", "val/pix_loss", "baseline/pix_loss", "val/word_loss", "val/pix_acc",
        "val/fold_psnr", "val/pix_nll_all", "val/bpd_folded", "val/bpd_8bit", "val/bpd_palette",
        "eval/exact_match", "eval/cer", "eval/answer_nll", "eval/blind_nll", "eval/blind_exact_match",
        "eval/chance_exact_match", "eval/exact_match_seen", "eval/exact_match_unseen"]


def print_table(summary: dict) -> None:
    run_dir = Path(summary["config"]["run"]["dir"] or Path(
        summary["config"]["trainer"]["default_root_dir"]) / summary["config"]["run"]["name"])
    width = max(len(r) for r in ROWS) + 2
    print("\n" + "metric".ljust(width) + "value")
    print("-" * (width + 12))
    for r in ROWS:
        value = summary.get(r)
        if isinstance(value, (int, float)) and not math.isnan(value):
            print(r.ljust(width) + f"{value:.4f}")
    for k in ("params", "steps", "pix_tokens_seen", "pix_tokens_per_s", "wall_s"):
        print(k.ljust(width) + str(summary.get(k)))
    if "val/pix_loss" in summary and "baseline/pix_loss" in summary:
        better = summary["val/pix_loss"] < summary["baseline/pix_loss"]
        print(f"\nval/pix_loss is {'below' if better else 'NOT below'} the color-frequency baseline")
    print(f"\nrun folder      {run_dir}")
    print(f"summary         {run_dir / 'summary.json'}")
    print(f"checkpoints     {run_dir / 'checkpoints'} (last.ckpt, best.ckpt)")
    print(f"pictures        {run_dir / 'pictures' / 'val_latest.png'}")
    print(f"tensorboard     tensorboard --logdir {run_dir / 'tb'}")
