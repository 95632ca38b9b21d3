"""Keep what the study's tables are made from: each run's records, trimmed, in runs/.

    python results/reading_small/keep_runs.py runs/grids/reading_small

Per run folder of the grid root: summary.json, config.yaml, metrics.jsonl, eval/captions.md
as they are, and eval/captions.json with every top-level field but each of its 1,024 records
cut to the fields `pixword compare`'s reading table reads (answer, prediction, exact, bucket,
seen; the document's key, the generated text beyond the answer, its token ids and NLL are
left out: about 80 KB a run instead of 320 KB). `pixword compare results/reading_small/runs/*
--ref arm-patch_linear --out DIR` on the kept folders writes the rows of reading_by_height.csv
that the grid root gave (cells in name order, not the grid's).
"""

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
KEEP = ("summary.json", "config.yaml", "metrics.jsonl", "eval/captions.md")
FIELDS = ("answer", "prediction", "exact", "bucket", "seen")


def main(root: str) -> None:
    for run in sorted(p.parent for p in Path(root).glob("*/summary.json")):
        dst = HERE / "runs" / run.name
        (dst / "eval").mkdir(parents=True, exist_ok=True)
        for name in KEEP:
            shutil.copyfile(run / name, dst / name)
        cap = json.loads((run / "eval" / "captions.json").read_text())
        cap["records"] = [{k: r[k] for k in FIELDS} for r in cap["records"]]
        (dst / "eval" / "captions.json").write_text(json.dumps(cap, separators=(",", ":")) + "\n")
        print(dst)


if __name__ == "__main__":
    main(*sys.argv[1:])
