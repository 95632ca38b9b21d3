"""Runs several `fit`s one after the other in one process (one world of processes under ddp or
fsdp: Lightning's launcher starts the other rank with the same command line, and the later
fits reuse that world), so the resume tests start processes once per strategy.

    python tests/resume_driver.py SPEC.json

SPEC: {"fits": [{"config": YAML, "overrides": [...], "resume": null | "last" | PATH,
"anyway": false}, ..., {"copy": [SRC, DST]} (a checkpoint file or folder, by rank 0), ...]}.
Each run also records, at the start of every training step, one number drawn from each of
torch's, numpy's and Python's global generators (rng.jsonl): a resumed run must draw the
numbers the uninterrupted run drew.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from pixword_lit.fit import train
from pixword_lit.system.config import load_config


class RngProbe(Callback):
    def __init__(self, run_dir):
        self.path = run_dir / "rng.jsonl"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        draws = [float(torch.rand(1)), float(np.random.rand()), random.random()]
        if trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": trainer.global_step + 1, "draws": draws}) + "\n")


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and 2 cores are shared
    make_trainer = train.make_trainer

    def with_probe(cfg, run_dir, logger=True, control=None):
        trainer = make_trainer(cfg, run_dir, logger, control)
        trainer.callbacks.insert(0, RngProbe(run_dir))
        return trainer

    train.make_trainer = with_probe
    for run in spec["fits"]:
        if "copy" in run:
            src, dst = map(Path, run["copy"])
            if os.environ.get("LOCAL_RANK", "0") == "0":  # Lightning's launcher: rank 0 copies
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
            continue
        train.fit(load_config(run["config"], run["overrides"]), resume=run.get("resume"),
                  anyway=run.get("anyway", False))


if __name__ == "__main__":
    main(sys.argv[1])
