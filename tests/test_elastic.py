"""Resume on another number of processes, exactly (issue 26): the data order depends on the
global batch size G = processes x batch x accumulation, not on how G is split.

Reuses the resume matrix's runs on the dataset whose epochs they cross (resume_matrix.py: 1 x 8,
ddp 2 x 4, fsdp 2 x 4, G = 8, 3 global batches an epoch, to step 10, stopped at 7 with
periodic checkpoints at 2, 4, 6) and adds two drivers: one process
(1 x 4 accumulated twice from the start; ddp's and fsdp's 2-process checkpoints resumed as
1 x 8 and 1 x 4 x 2) and one world of 2 processes (the 1-process checkpoints resumed as
ddp and fsdp 2 x 4). Every resumed run is compared with the straight 2-process run of its
strategy: per-step losses, which batch of which epoch each step trained on, the global RNG
draws, token counters, epochs, the final parameters and val/loss.

Tolerance: the runs differ only in how the global batch's gradient sum is reduced (one
process sums 8 samples' gradients; two sum 4 each and gloo adds the two; accumulation adds
two micro-batch sums), float32 summation in another order, ~1e-7 relative per reduction.
Over 10 AdamW steps of the tiny model the measured differences stay below 1.2e-6 in the
losses (absolute) and 1.1e-7 relative in the parameter checksum and val/loss; the checks
allow 1e-5 (losses, absolute) and 1e-5 (checksum and val/loss, relative), about one and two
orders of magnitude above them, and still far below what one sample trained more or less
changes (~1e-2 in the loss). Batches, epochs and token counters are compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from resume_matrix import DATASETS, QUICKSTART, STEPS, jsonl, overrides, run_fits, summary

LOSS_TOL, REL_TOL = 1e-5, 1e-5
ACC = ["data.batch_size=4", "trainer.accumulate_grad_batches=2"]  # 1 x 4 x 2: G = 8
FSDP1 = ["trainer.devices=1"]  # the fsdp overrides (batch 4) on one process
FSDP1_8 = [*FSDP1, "data.batch_size=8"]


def _acc(dataset):  # validation every 2 x as many micro-batches: the same optimizer steps
    return [*ACC, f"trainer.val_check_interval={2 * DATASETS[dataset][1]}"]


def cases(m: dict, root: Path) -> dict:
    """name -> (driver, strategy overrides of, dataset, extra overrides, resume source, steps,
    reference run, first step compared). Mid: the periodic checkpoint at step 4 (mid-epoch);
    end: the end-of-fit one at 7 (mid-epoch); fsdp1-mid: step 8 of a 1-process run."""
    S = "small"

    def ref(strategy):
        return m[strategy] / f"{S}-w0" / "reference"

    def stopped(strategy, name):
        base = m[strategy] / f"{S}-w0" / "stopped"
        return base / name if name == "end.ckpt" else base / "checkpoints" / name

    return {
        # one process: G = 8 as 1 x 4 x 2 from the start; 2 -> 1 from ddp and fsdp
        "acc-straight": ("one", "single", S, _acc(S), None, STEPS, ref("ddp"), 1),
        "ddp-end-1x8": ("one", "single", S, [], stopped("ddp", "end.ckpt"), STEPS, ref("ddp"), 8),
        "ddp-mid-1x4x2": ("one", "single", S, _acc(S), stopped("ddp", "step0000004.ckpt"), STEPS,
                          ref("ddp"), 5),
        "ddp-end-1x4x2": ("one", "single", S, _acc(S), stopped("ddp", "end.ckpt"), STEPS,
                          ref("ddp"), 8),
        "fsdp-end-1x8": ("one", "fsdp", S, FSDP1_8, stopped("fsdp", "end.ckpt"), STEPS,
                         ref("fsdp"), 8),
        "fsdp-mid-1x4x2": ("one", "fsdp", S, [*FSDP1, *_acc(S)], stopped("fsdp", "step0000004.ckpt"),
                           7, ref("fsdp"), 5),
        # two processes: 1 -> 2 from the one-process runs
        "single-end-2x4": ("two", "ddp", S, [], stopped("single", "end.ckpt"), STEPS, ref("ddp"), 8),
        "single-mid-2x4": ("two", "ddp", S, [], stopped("single", "step0000004.ckpt"), STEPS,
                           ref("ddp"), 5),
        "fsdp1-end-2x4": ("two", "fsdp", S, [], root / "fsdp-mid-1x4x2" / "checkpoints" / "last.ckpt",
                          STEPS, ref("fsdp"), 8),
        "fsdp1-mid-2x4": ("two", "fsdp", S, [], root / "fsdp-end-1x8" / "checkpoints" / "step0000008.ckpt",
                          STEPS, ref("fsdp"), 9),
    }


@pytest.fixture(scope="module")
def elastic(matrix_runs, tmp_path_factory, glyph_shards, small_shards):
    m = {s: matrix_runs(s) for s in ("single", "ddp", "fsdp")}
    root = tmp_path_factory.mktemp("elastic")
    shards = {"large": glyph_shards, "small": small_shards}
    all_cases = cases(m, root)
    for driver in ("one", "two"):
        fits = []
        for name, (d, strategy, dataset, extra, source, steps, _, _) in all_cases.items():
            if d == driver:
                over = overrides(strategy, shards[dataset], dataset, 0, root / name, steps)
                fits.append({"config": QUICKSTART, "overrides": [*over, *extra],
                             "resume": str(source) if source else None})
        run_fits(fits, root, f"elastic {driver}", f"{driver}.json")
    return m, root, all_cases


def assert_same_training(ref: Path, run: Path, steps: list[int], final: bool = True,
                         rng: bool = True, torch_rng: bool = True) -> None:
    """`run` trained steps `steps` as `ref` did, to the stated tolerance; `final`: and ended
    alike (both at the same step); `rng`: the global RNGs drew the same numbers at each step
    (`torch_rng` False: numpy's and Python's only)."""
    la, lb = jsonl(ref / "train_log.jsonl", "loss"), jsonl(run / "train_log.jsonl", "loss")
    assert [lb[s] for s in steps] == pytest.approx([la[s] for s in steps], abs=LOSS_TOL)
    for key in ("epoch", "batch"):  # which global batch of which epoch each step trained on
        ka, kb = jsonl(ref / "train_log.jsonl", key), jsonl(run / "train_log.jsonl", key)
        assert [kb[s] for s in steps] == [ka[s] for s in steps], key
    if rng:
        ra, rb = jsonl(ref / "rng.jsonl", "draws"), jsonl(run / "rng.jsonl", "draws")
        first = 0 if torch_rng else 1  # each step's draws: torch, numpy, python
        assert [rb[s][first:] for s in steps] == [ra[s][first:] for s in steps]
    if not final:
        return
    a, b = summary(ref), summary(run)
    assert a["status"] == b["status"] == "finished" and a["steps"] == b["steps"]
    for key in ("tokens_seen", "pix_tokens_seen", "epochs"):
        assert b[key] == a[key], key
    assert b["param_checksum"] == pytest.approx(a["param_checksum"], rel=REL_TOL)
    assert b["val/loss"] == pytest.approx(a["val/loss"], rel=REL_TOL)


@pytest.mark.multiproc
def test_one_global_batch_however_split(matrix_runs):
    """From the same seed, 2 x 4 (ddp, fsdp) = 1 x 8 (the matrix's straight runs). (Not
    torch's RNG draws: starting 2 processes consumes torch's generator before step 1; a
    resumed run restores rank 0's, and there they agree, below.)"""
    ddp = matrix_runs("ddp") / "small-w0" / "reference"
    for other in ("single", "fsdp"):
        assert_same_training(ddp, matrix_runs(other) / "small-w0" / "reference",
                             list(range(1, STEPS + 1)), torch_rng=other == "fsdp")


CASES = ["acc-straight", "ddp-end-1x8", "ddp-mid-1x4x2", "ddp-end-1x4x2", "fsdp-end-1x8",
         "fsdp-mid-1x4x2", "single-end-2x4", "single-mid-2x4", "fsdp1-end-2x4", "fsdp1-mid-2x4"]


@pytest.mark.multiproc
@pytest.mark.parametrize("name", CASES)
def test_resume_on_another_world_size_is_exact(elastic, name):
    m, root, all_cases = elastic
    _, strategy, dataset, extra, source, steps, ref, first = all_cases[name]
    run, steps = root / name, list(range(first, steps + 1))
    # the probe draws at each micro-batch: an accumulated run (or one resumed from one) draws
    # other numbers than the run it is compared with
    accumulated = ACC[1] in extra or name == "fsdp1-end-2x4"
    assert_same_training(ref, run, steps, final=steps[-1] == STEPS, rng=not accumulated,
                         torch_rng=False)
    if name.startswith("single-"):  # torch's draws continue the 1-process run's (rank 0's)
        one = m["single"] / f"{dataset}-w0" / "reference"
        ra, rb = jsonl(one / "rng.jsonl", "draws"), jsonl(run / "rng.jsonl", "draws")
        assert [rb[s] for s in steps] == [ra[s] for s in steps]
    elif source and not accumulated:  # the 2-process run's
        assert_same_training(ref, run, steps, final=False)
    s = summary(run)
    world = 1 if strategy == "single" or "trainer.devices=1" in extra else 2
    assert s["world_size"] == world and s["resume_changes"] == []
    if source:
        assert s["resumed_from"][-1] == str(source)
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        assert min(r["step"] for r in log) == first  # resumed where the source stopped


def test_a_changed_data_order_is_refused_by_name_and_recorded_when_forced(matrix_runs, tmp_path,
                                                                          glyph_shards, small_shards):
    """--resume with another data.train, run.seed or global batch size stops before training,
    naming the key and both values; --resume-anyway goes on and records it in summary.json."""
    from pixword_lit.fit.train import fit
    from pixword_lit.system.checkpoints import CheckpointError
    from pixword_lit.system.config import load_config

    source = matrix_runs("single") / "large-w0" / "stopped" / "end.ckpt"  # 1 x 8 at step 7
    base = overrides("single", glyph_shards, "large", 0, tmp_path / "run", 8)
    refused = {
        "data.train": (f"data.train={small_shards}/train",
                       f"data.train: '{glyph_shards}/train' in the checkpoint, '{small_shards}/train' now"),
        "run.seed": ("run.seed=5", "run.seed: 2026 in the checkpoint, 5 now"),
        "global batch size": ("data.batch_size=4", "global batch size: 8 in the checkpoint, 4 now"),
    }
    for key, (change, said) in refused.items():
        with pytest.raises(CheckpointError) as err:
            fit(load_config(QUICKSTART, [*base, change]), resume=str(source))
        msg = str(err.value)
        assert said in msg and "--resume-anyway" in msg and "\n" not in msg, key
        assert not (tmp_path / "run" / "train_log.jsonl").exists()  # nothing trained
    cfg = load_config(QUICKSTART, [*base, "run.seed=5"])
    done = fit(cfg, resume=str(source), anyway=True)
    assert done["steps"] == 8 and done["resume_changes"] == [
        {"key": "run.seed", "checkpoint": 2026, "now": 5, "checkpoint_path": str(source), "step": 7}]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resume_changes"] == \
        done["resume_changes"]


def test_data_global_batch_size_sets_the_accumulation():
    from pixword_lit.system.config import ConfigError, load_config
    from pixword_lit.system.resume import global_batch_size, resolve_global_batch

    def resolved(*over):
        cfg = load_config(None, ["trainer.accelerator=cpu", "data.batch_size=4", *over])
        resolve_global_batch(cfg)
        return cfg.trainer.accumulate_grad_batches, global_batch_size(cfg)

    assert resolved("data.global_batch_size=8") == (2, 8)
    assert resolved("data.global_batch_size=8", "trainer.devices=2") == (1, 8)
    assert resolved("data.global_batch_size=16", "trainer.devices=2", "trainer.num_nodes=2") == (1, 16)
    assert resolved("trainer.accumulate_grad_batches=3") == (3, 12)  # unset: W x B x A
    for over, said in ((["data.global_batch_size=6"], "not a multiple of processes x data.batch_size"),
                       (["data.global_batch_size=8", "trainer.accumulate_grad_batches=3"],
                        "needs trainer.accumulate_grad_batches 2")):
        with pytest.raises(ConfigError, match="^data.global_batch_size: ") as err:
            resolved(*over)
        assert said in str(err.value)
