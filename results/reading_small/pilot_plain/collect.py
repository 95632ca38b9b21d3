"""The tables of the plain-rendering pilot, from the runs' files kept in this folder.

    python results/reading_small/pilot_plain/collect.py

For each run folder (pix_table, patch_linear): summary.csv gets its summary.json numbers;
mid_evals.csv one row per evaluated checkpoint (mid/stepNNNNNNN.json: `pixword eval captions
CKPT --limit 256`'s captions.json, and the final eval of all 1,024 val documents,
eval/captions.json); breakdown.csv exact match and CER per ink height, seen and unseen
answers apart, of every one of those evals (pilot_words/breakdown.py's rule), exact match
with its 95% Wilson interval over the documents (one seed: not the spread between seeds).
"""

import csv
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "pilot_words"))
from breakdown import edits, groups, px_per_window  # noqa: E402

RUNS = ["pix_table", "patch_linear"]
SUMMARY_KEYS = ["params", "steps", "train_s", "flops_per_batch", "train_flops", "val/pix_loss",
                "val/word_loss", "eval/exact_match", "eval/cer", "eval/answer_nll", "eval/blind_nll",
                "eval/blind_exact_match", "eval/chance_exact_match", "eval/exact_match_seen",
                "eval/exact_match_unseen", "git_commit", "machine", "command"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n: over the val documents of one run (one seed),
    so it carries the sampling of documents, not the spread between seeds."""
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return mid - half, mid + half


def write(name, rows):
    with open(HERE / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def evals(run):
    """(step, captions.json) of every eval of `run`, in step order."""
    out = []
    for p in sorted((HERE / run / "mid").glob("step*.json")):
        out.append((int(p.stem[4:]), json.loads(p.read_text())))
    final = json.loads((HERE / run / "eval" / "captions.json").read_text())
    steps = json.loads((HERE / run / "summary.json").read_text())["steps"]
    return [*out, (steps, final)]


def main():
    summary, mid, breakdown = [], [], []
    for run in RUNS:
        s = json.loads((HERE / run / "summary.json").read_text())
        summary.append({"run": run, **{k: s.get(k) for k in SUMMARY_KEYS}})
        for step, r in evals(run):
            recs = r["records"]
            mid.append({"run": run, "step": step, "documents": len(recs),
                        "exact_match": r["eval/exact_match"], "cer": r["eval/cer"],
                        "answer_nll": r["eval/answer_nll"], "blind_nll": r["eval/blind_nll"],
                        "exact_match_seen": r["eval/exact_match_seen"],
                        "exact_match_unseen": r["eval/exact_match_unseen"],
                        "distinct_predictions": len({x["prediction"] for x in recs})})
            px = px_per_window(r)
            for b, group, sel in groups(recs, with_all=False):
                chars, k = sum(len(x["answer"]) for x in sel), sum(x["exact"] for x in sel)
                lo, hi = wilson(k, len(sel))
                breakdown.append({
                    "run": run, "step": step, "height_px": round(float(b) * px, 3),
                    "answers": group, "n": len(sel), "exact_match": k / len(sel),
                    "exact_low95": lo, "exact_high95": hi,
                    "cer": sum(edits(x["prediction"], x["answer"]) for x in sel) / chars})
    write("summary.csv", summary)
    write("mid_evals.csv", mid)
    write("breakdown.csv", breakdown)


if __name__ == "__main__":
    main()
