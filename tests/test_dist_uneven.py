"""Uneven shards on 2 ddp CPU processes: one epoch of 91 units in shards of 37, 30 and 24.

12 global batches of 2 x 4 units; the last holds 3 (rank 0) and a placeholder (rank 1).
The run is bounded by one epoch, not by max_steps, so a rank that ran more or fewer batches
shows in the step count (or hangs at a collective, which the timeout turns into a failure),
and the tokens trained on, summed over both ranks, are those of the 91 units exactly once.

Validation is uneven too: 11 units, 2 global batches; in the second rank 0 validates 3 units
and rank 1 a placeholder. The validation metrics of the run (reduced over both ranks) are
those of its final checkpoint validated on one process: every unit scored once, the
placeholder nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pixword_lit.system.config import DEBUG_MODEL, REPO_ROOT

pytestmark = pytest.mark.multiproc

SIZES = (37, 30, 24)
VAL = 11  # validation units: odd, and not a multiple of the global batch (8)


def reshard(folder: Path, sizes) -> None:
    """Re-cut the samples of a prep folder into shards of the given sizes (same index format)."""
    index = json.loads((folder / "index.json").read_text())
    members = []
    for s in index["shards"]:
        with tarfile.open(folder / s["name"]) as tar:
            members += [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        (folder / s["name"]).unlink()
    keys = sorted({m.name.split(".")[0] for m, _ in members})
    assert len(keys) == sum(sizes)
    shards, start = [], 0
    for i, n in enumerate(sizes):
        chunk = set(keys[start : start + n])
        start += n
        name = f"shard-{i:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for m, data in members:
                if m.name.split(".")[0] in chunk:
                    tar.addfile(m, io.BytesIO(data))
        shards.append({"name": name, "samples": n, "images": n})
    index["shards"] = shards
    (folder / "index.json").write_text(json.dumps(index))


def test_uneven_shards_two_ranks_one_epoch(tmp_path):
    from data_prep.glyphs import build_glyphs
    from pixword_lit.data.shards import read_shard
    from pixword_lit.fit.train import validate
    from pixword_lit.system.build import build_parts
    from pixword_lit.system.config import load_config

    shards = tmp_path / "g"
    build_glyphs(shards, num_train=sum(SIZES), num_val=VAL, seed=1)
    reshard(shards / "train", SIZES)
    run = tmp_path / "run"
    overrides = [
        *DEBUG_MODEL, f"data.train={shards}/train", f"data.val={shards}/val", "data.batch_size=4",
        "data.num_workers=2", "data.max_seq_len=64", "data.shuffle=true", "data.val_limit=null",
        "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=2",
        "trainer.max_steps=1000", "trainer.max_epochs=1", "trainer.val_check_interval=null",
        "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", f"run.dir={run}",
    ]
    cmd = [sys.executable, "-m", "pixword_lit.cli", "fit", str(REPO_ROOT / "experiments" / "quickstart.yaml"),
           *overrides]
    res = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                         text=True, timeout=400)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    summary = json.loads((run / "summary.json").read_text())
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    # ceil(91 / (2 x 4)) = 12 global batches, one epoch, and 12 optimizer steps in all
    assert [(r["epoch"], r["batch"]) for r in log] == [(0, b) for b in range(12)]
    assert summary["steps"] == 12 and summary["world_size"] == 2
    # what both ranks trained on, summed: every unit once, the placeholder nothing
    cfg = load_config(REPO_ROOT / "experiments" / "quickstart.yaml", overrides)
    parts = build_parts(cfg, None)
    elements = pixels = units = 0
    for url in parts.train.urls:
        for raw in read_shard(url):
            for unit in parts.builder.units(raw):
                sample = parts.builder.build(unit)
                elements += int(sample["elem_valid"].sum())
                pixels += sample["n_pixels"]
                units += 1
    assert units == sum(SIZES)
    assert (summary["tokens_seen"], summary["pix_tokens_seen"]) == (elements, pixels)
    # validation on 2 ranks (the final one, of the final weights) = on 1 process
    assert sum(s["samples"] for s in json.loads((shards / "val" / "index.json").read_text())["shards"]) == VAL
    one = validate(str(run / "checkpoints" / "last.ckpt"), ["data.num_workers=0"])
    for key in ("val/loss", "val/pix_loss", "val/word_loss", "val/pix_acc", "val/fold_psnr",
                "baseline/pix_loss"):
        assert summary[key] == pytest.approx(one[key], rel=1e-6), key
