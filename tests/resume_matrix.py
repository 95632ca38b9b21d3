"""The resume matrix of issue 9, shared by test_resume.py and test_preempt.py (fixtures in
conftest.py): {1 process, ddp 2 processes, fsdp 2 processes} x {end-of-fit last.ckpt,
periodic, epoch boundary} x data.num_workers {0, 2} (fsdp: 0), on a dataset whose epochs the
runs cross ("small": 24 units, 3 global batches an epoch: its checkpoints are mid-epoch and
at an epoch end) and, on 1 process without data workers, also one the runs stay inside one
epoch of ("large": 96 units, 12 batches an epoch; combos()).

One process runs every fit of the 1-process matrix in turn, and one world of 2 processes every
fit of the ddp matrix and then of the fsdp one (resume_driver.py; a world started once: ~6 s of
CPU per process to start): for each dataset an
uninterrupted reference to step 10, without data workers (batches do not depend on the workers:
data/workers.py; so the runs with workers are held to the same reference, a stronger check
than a reference of their own); for each (dataset, workers) a run stopped at step 7, whose
periodic checkpoints are the periodic and epoch-boundary ones and whose last.ckpt is the
end-of-fit one (mid-epoch in both datasets); runs resumed from those to step 10 (in new
folders, with --resume PATH); on one process also from best.ckpt (written right after a
validation); and last the stopped run itself continued with --resume last. (The stopped run's
end-of-fit checkpoint is also copied aside, as stopped/end.ckpt, for test_elastic.py.) On one
process the same runs (end-of-fit and periodic) also for the VARIANTS: the dense objective,
full_causal attention and a fitted palette, on the dataset whose epochs they cross.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixword_lit.system.config import DEBUG_MODEL, REPO_ROOT

QUICKSTART = str(REPO_ROOT / "experiments" / "quickstart.yaml")
DRIVER = str(Path(__file__).with_name("resume_driver.py"))
STEPS, STOP = 10, 7
DATASETS = {  # name: (periodic every, validation every, the periodic checkpoint resumed)
    "large": (3, 5, "step0000003.ckpt"),  # checkpoints 3, 6 mid-epoch; best.ckpt at 5 mid-epoch
    "small": (2, 3, "step0000004.ckpt"),  # 2, 4 mid-epoch, 6 at an epoch end; validations at ends
}
KINDS = ["end_of_fit", "periodic", "epoch_boundary", "best"]
VARIANTS = {  # the components whose state or loss path a resume could miss, on 1 process ("small")
    "dense": ["model.objective.name=dense"],  # the local decoder's parameters and pixel targets
    "full_causal": ["model.attention.name=full_causal"],
    "palette": ["model.folding.name=palette", "model.folding.colors=16",  # fitted at the start:
                "model.folding.sample_pixels=4000"],  # resumed from the checkpoint, not refitted
}
VARIANT_KINDS = ["end_of_fit", "periodic"]
STRATEGIES = {  # name: (overrides, batch size per process, kinds)
    "single": ([], 8, KINDS),
    "ddp": (["trainer.strategy=ddp", "trainer.devices=2"], 4, KINDS[:3]),
    "fsdp": (["trainer.strategy=fsdp", "trainer.devices=2"], 4, KINDS[:3]),
}


def source(dataset: str, kind: str) -> str:
    """The checkpoint of the stopped run that `kind` resumes from."""
    return {"end_of_fit": "last.ckpt", "periodic": DATASETS[dataset][2],
            "epoch_boundary": "step0000006.ckpt", "best": "best.ckpt"}[kind]


def combos(strategy: str):
    """(dataset, data workers) of a strategy's runs. Data workers, and under ddp and fsdp
    everything, only on the dataset whose epochs the runs cross: its checkpoints cover every
    kind the other one's do, and its runs start workers again at each epoch. Not under fsdp:
    the loaders do not know the strategy (ddp runs them on 2 ranks), and fsdp's own state,
    the sharded model and optimizer, is the same with or without them."""
    for dataset in DATASETS:
        for workers in (0, 2):
            if dataset == "small" and (workers == 0 or strategy != "fsdp"):
                yield dataset, workers
            elif strategy == "single" and workers == 0:
                yield dataset, workers


def cases(strategy: str):
    for dataset, workers in combos(strategy):
        for kind in STRATEGIES[strategy][2]:
            if kind != "epoch_boundary" or dataset == "small":
                yield dataset, workers, kind


def overrides(strategy, shards, dataset, workers, run_dir, steps, variant=None) -> list[str]:
    dist, batch, _ = STRATEGIES[strategy]
    every, val_every, _ = DATASETS[dataset]
    extra = VARIANTS[variant] if variant else []
    model = [o for o in DEBUG_MODEL if variant != "palette" or not o.startswith("model.folding.")]
    return [
        *model, *extra, *dist, f"data.train={shards}/train", f"data.val={shards}/val",
        f"data.batch_size={batch}", f"data.num_workers={workers}", "data.max_seq_len=64",
        "data.val_limit=4", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        f"trainer.val_check_interval={val_every}", "trainer.check_val_every_n_epoch=null",
        "trainer.log_every_n_steps=1", f"optim.decay_steps={STEPS}", "optim.warmup_steps=2",
        f"run.ckpt_every_n_steps={every}", f"trainer.max_steps={steps}", f"run.dir={run_dir}",
        "run.pictures=0",
    ]


def matrix_fits(strategy: str, root: Path, shards: dict) -> list[dict]:
    """The fits of a strategy's matrix, its runs in folders under `root` (for run_fits)."""
    fits = []

    def fit(dataset, workers, name, steps, resume=None, variant=None):
        run_dir = root / folder(dataset, workers, variant) / name
        over = overrides(strategy, shards[dataset], dataset, workers, run_dir, steps, variant)
        fits.append({"config": QUICKSTART, "overrides": over, "resume": resume})

    for dataset, workers in combos(strategy):
        stopped = root / f"{dataset}-w{workers}" / "stopped" / "checkpoints"
        if workers == 0:  # the reference of both (combos() yields workers 0 first)
            fit(dataset, workers, "reference", STEPS)
        fit(dataset, workers, "stopped", STOP)
        if workers == 0:  # its end-of-fit checkpoint, kept for test_elastic.py
            fits.append({"copy": [str(stopped / "last.ckpt"), str(stopped.parent / "end.ckpt")]})
        for kind in STRATEGIES[strategy][2]:
            if kind != "end_of_fit" and (kind != "epoch_boundary" or dataset == "small"):
                fit(dataset, workers, kind, STEPS, str(stopped / source(dataset, kind)))
        fit(dataset, workers, "stopped", STEPS, "last")  # the end-of-fit one, in its folder
    for variant in VARIANTS if strategy == "single" else []:
        stopped = root / folder("small", 0, variant) / "stopped" / "checkpoints"
        fit("small", 0, "reference", STEPS, variant=variant)
        fit("small", 0, "stopped", STOP, variant=variant)
        fit("small", 0, "periodic", STEPS, str(stopped / source("small", "periodic")), variant)
        fit("small", 0, "stopped", STEPS, "last", variant)
    return fits


def folder(dataset: str, workers: int, variant: str | None = None) -> str:
    return f"{dataset}-w{workers}" + (f"-{variant}" if variant else "")


def run_fits(fits: list[dict], root: Path, label: str, name: str = "spec.json") -> Path:
    """Run resume_driver.py on `fits` (one process, or one world of them), from `root`."""
    spec = root / name
    spec.write_text(json.dumps({"fits": fits}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, DRIVER, str(spec)], env=env, capture_output=True,
                         text=True, timeout=1200, cwd=root)
    if res.returncode != 0:
        raise AssertionError(f"{label}: {res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return root


def jsonl(path: Path, key: str) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec[key]
    return out


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def assert_same_run(ref: Path, run: Path, steps: list[int], rng: bool = True) -> None:
    """`run` trained steps `steps` exactly as the uninterrupted `ref` did, and ended alike."""
    a, b = summary(ref), summary(run)
    assert a["status"] == b["status"] == "finished" and a["steps"] == b["steps"]
    la, lb = jsonl(ref / "train_log.jsonl", "loss"), jsonl(run / "train_log.jsonl", "loss")
    assert [lb[s] for s in steps] == pytest.approx([la[s] for s in steps], abs=1e-6)
    for key in ("epoch", "batch"):  # which batch of which epoch each step trained on
        ka, kb = jsonl(ref / "train_log.jsonl", key), jsonl(run / "train_log.jsonl", key)
        assert [kb[s] for s in steps] == [ka[s] for s in steps], key
    assert b["param_checksum"] == pytest.approx(a["param_checksum"], rel=1e-6, abs=1e-6)
    for key in ("tokens_seen", "pix_tokens_seen", "epochs", "world_size"):
        assert b[key] == a[key], key
    assert b["val/loss"] == pytest.approx(a["val/loss"], rel=1e-5)  # the final model, in memory
    if rng:  # torch, numpy and python draws at the start of each step
        ra, rb = jsonl(ref / "rng.jsonl", "draws"), jsonl(run / "rng.jsonl", "draws")
        assert [rb[s] for s in steps] == [ra[s] for s in steps]


def check_case(root: Path, dataset: str, workers: int, kind: str, variant: str | None = None) -> None:
    base = root / folder(dataset, workers, variant)
    run = base / ("stopped" if kind == "end_of_fit" else kind)
    assert f"num_workers: {workers}\n" in (run / "config.yaml").read_text()
    log = jsonl(run / "train_log.jsonl", "batch")
    first = min(log)  # the end-of-fit run logged steps 1..10 in its one folder
    reference = root / folder(dataset, 0, variant) / "reference"  # without workers
    assert_same_run(reference, run, list(range(first, STEPS + 1)))
    resumed_at = STOP + 1 if kind == "end_of_fit" else first
    assert resumed_at > 1 and summary(run)["resumed_from"][-1].endswith(source(dataset, kind))
    # the state resumed from: mid-epoch, or (epoch boundary) batch 0 of the next epoch
    at_boundary = log[resumed_at] == 0
    assert at_boundary == (kind == "epoch_boundary" or (kind == "best" and dataset == "small"))
    assert summary(run)["wall_s"] > 0
