"""Exact match and CER per ink height, seen and unseen val answers apart, from a run's
eval/captions.json (whose per-height rows hold both kinds): one CSV row per (height, group).

    python results/reading_small/pilot_words/breakdown.py RUN/eval/captions.json OUT.csv [LABEL]

CER as torchmetrics' CharErrorRate (what `pixword eval captions` reports): the group's summed
character edits over its summed answer characters.
"""

import csv
import json
import sys


def edits(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def px_per_window(r: dict) -> float:
    """Stored pixels per window of an eval: its bucket is the ink height after the resize to
    image_size, in windows; the canvas's longer side is 48 px (reading.CANVAS)."""
    return r["window_size"] * 48 / r["image_size"]


def groups(recs: list[dict], with_all: bool = True):
    """(bucket, answers, records) of every non-empty group: each ink-height bucket (and, with
    `with_all`, "all" of them) x seen, unseen and all answers."""
    buckets = sorted({x["bucket"] for x in recs}, key=float)
    for b in [*buckets, "all"] if with_all else buckets:
        for group in ("seen", "unseen", "all"):
            sel = [x for x in recs if (b == "all" or x["bucket"] == b)
                   and (group == "all" or x["seen"] == (group == "seen"))]
            if sel:
                yield b, group, sel


def main(src: str, out: str, label: str = "") -> None:
    r = json.loads(open(src).read())
    px = px_per_window(r)
    rows = []
    for b, group, sel in groups(r["records"]):
        chars = sum(len(x["answer"]) for x in sel)
        rows.append({"run": label, "height_px": "all" if b == "all" else round(float(b) * px, 3),
                     "height_windows": b, "answers": group, "n": len(sel),
                     "exact_match": sum(x["exact"] for x in sel) / len(sel),
                     "cer": sum(edits(x["prediction"], x["answer"]) for x in sel) / chars})
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
