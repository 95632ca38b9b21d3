"""`train/loss_per_1000_images` (callbacks.LossPerImages): the authors' curve, the mean
training loss over each block of N training units of the global batch, surviving resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config

from pixword_lit.fit.callbacks import LossPerImages
from pixword_lit.fit.train import fit


def _step(cb, trainer, units, loss):
    """One optimizer step of one micro-batch through the callback's hooks."""
    cb.on_train_batch_start(trainer, None, None, 0)
    trainer.global_step += 1
    cb.on_train_batch_end(trainer, None, {"units": torch.tensor(float(units)),
                                          "mean_loss": torch.tensor(loss)}, None, 0)


def test_blocks_share_a_step_across_their_end_and_resume(tmp_path):
    logged = []
    logger = SimpleNamespace(log_metrics=lambda m, step: logged.append((step, *m.values())))
    trainer = SimpleNamespace(global_step=0, global_rank=0, loggers=[logger])
    cb = LossPerImages(tmp_path, block=6)
    _step(cb, trainer, 4, 1.0)
    _step(cb, trainer, 4, 4.0)  # 2 of its units end block 0, 2 open block 1
    state = cb.state_dict()
    again = LossPerImages(tmp_path, block=6)  # a resumed run: the counters from the checkpoint
    again.load_state_dict(state)
    for c in (cb, again):
        _step(c, trainer, 4, 7.0)
    assert logged[0] == (0, pytest.approx((4 * 1 + 2 * 4) / 6))
    assert logged[1] == logged[2] == (1, pytest.approx((2 * 4 + 4 * 7) / 6))
    assert LossPerImages(tmp_path, block=7).load_state_dict(state) is None  # other N: afresh


@pytest.mark.slow
def test_tiny_fit_logs_the_block_means_of_its_steps(glyph_shards, tmp_path):
    cfg = tiny_config(glyph_shards, tmp_path, "trainer.max_steps=6", "run.loss_block_images=5",
                      "trainer.val_check_interval=6")
    fit(cfg)
    run = tmp_path / "run"
    steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    per_unit = [s["loss"] for s in steps for _ in range(4)]  # global batch 4: 24 units
    blocks = [json.loads(line) for line in (run / "loss_per_5_images.jsonl").read_text().splitlines()]
    assert [b["block"] for b in blocks] == [0, 1, 2, 3] and blocks[-1]["images"] == 20
    for b in blocks:
        assert b["loss"] == pytest.approx(sum(per_unit[5 * b["block"]: 5 * b["block"] + 5]) / 5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    points = acc.Scalars("train/loss_per_5_images")
    assert [p.step for p in points] == [0, 1, 2, 3]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["callbacks"]["LossPerImages"]  # the open block travels: 4 units of step 6
    assert state["blocks"] == 4 and state["units"] == 4
    assert state["loss_sum"] == pytest.approx(4 * steps[-1]["loss"])
