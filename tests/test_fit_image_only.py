"""One real `pixword fit` of an image_only experiment, through the CLI and in this process, with
what it promises checked on it: the word loss is absent (no word targets), gradients are clipped
at trainer.gradient_clip_val, the color-frequency baseline is the hand-computed one, and
--overwrite starts a used run folder again."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf
from torch.optim.optimizer import register_optimizer_step_post_hook

from pixword_lit.cli import main
from pixword_lit.data.stream import ShardStream
from pixword_lit.system.build import build_parts

pytestmark = pytest.mark.slow

CLIP, STEPS, VAL = 1e-3, 4, 8


@pytest.fixture(scope="module")
def image_only_run(glyph_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image_only")
    cfg = tiny_config(glyph_shards, tmp, f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}",
                      f"data.val_limit={VAL}", f"trainer.gradient_clip_val={CLIP}", mode="image_only")
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)  # an earlier run in the same folder
    (run / "checkpoints" / "last.ckpt").write_bytes(b"earlier")
    (run / "metrics.jsonl").write_text('{"step": 999}\n')
    yaml = tmp / "image_only.yaml"
    OmegaConf.save(cfg, yaml)
    norms = []

    def grad_norm(optimizer, args, kwargs):  # after optimizer.step(): the clipped gradients it used
        grads = [p.grad.detach().double() for g in optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                                    for g in grads]))))

    handle = register_optimizer_step_post_hook(grad_norm)
    try:
        assert main(["fit", str(yaml), "--overwrite"]) == 0
    finally:
        handle.remove()
    summary = json.loads((run / "summary.json").read_text())
    return cfg, run, summary, norms


def test_overwrite_started_the_folder_again(image_only_run):
    _, run, summary, _ = image_only_run
    assert (run / "checkpoints" / "last.ckpt").read_bytes() != b"earlier"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [STEPS] and summary["steps"] == STEPS


def test_image_only_has_no_word_loss(image_only_run):
    from test_fit import tb_tags

    _, run, summary, _ = image_only_run
    for key in ("val/loss", "val/pix_loss", "val/pix_acc", "baseline/pix_loss"):
        assert math.isfinite(summary[key]), key
    # val/loss also scores the structural <|image|> <|/image|> </s> targets (spec section 5)
    assert summary["val/loss"] != summary["val/pix_loss"]
    assert not math.isfinite(summary.get("val/word_loss", math.nan))  # absent, not a number
    curve = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not math.isfinite(curve[-1].get("val/word_loss", math.nan))
    scalars = tb_tags(run).Tags()["scalars"]
    assert "val/pix_loss" in scalars and "train/pix_loss" in scalars
    assert "val/word_loss" not in scalars and "train/word_loss" not in scalars
    assert summary["config"]["data"]["mode"] == "image_only"


def test_gradients_are_clipped_at_the_configured_norm(image_only_run):
    _, _, _, norms = image_only_run
    assert len(norms) == STEPS
    # a fresh model's gradient norm is far above 1e-3, so every step was clipped to exactly it
    assert norms == pytest.approx([CLIP] * STEPS, rel=1e-3)


def test_color_frequency_baseline_from_the_batches_trained_on(image_only_run):
    """baseline/pix_loss = mean over the validation pix targets of -log p(color), p the
    training pix targets' frequencies with add-one smoothing, by hand from the same batches."""
    cfg, _, summary, _ = image_only_run
    parts = build_parts(cfg, None)
    v, n_pix = parts.vocab.n_words, parts.vocab.n_pix
    train = ShardStream(parts.train, parts.builder, cfg.data.batch_size, cfg.run.seed, True)
    counts = np.zeros(n_pix)
    for i, batch in enumerate(train):
        if i == STEPS:
            break
        t = batch["targets"].numpy()
        np.add.at(counts, t[t >= v] - v, 1)
    val = ShardStream(parts.val, parts.builder, cfg.data.batch_size, cfg.run.seed, False, limit=VAL)
    val_t = np.concatenate([b["targets"].numpy().ravel() for b in val])
    val_pix = val_t[val_t >= v] - v
    p = (counts + 1) / (counts.sum() + n_pix)
    assert counts.sum() > 0 and len(val_pix) > 0
    assert summary["baseline/pix_loss"] == pytest.approx(float(-np.log(p[val_pix]).mean()), rel=1e-6)


def test_the_run_counts_its_flops_as_pixword_bench_does(image_only_run, tmp_path):
    """summary.json's flops_per_batch is what `pixword bench` counts for one training step of
    the same config on the same first batch; train_flops is that times the batches trained."""
    from pixword_lit.bench.step import loss_of, make_model, setup
    from pixword_lit.fit.flops import train_step_flops

    cfg, _, summary, _ = image_only_run
    yaml = tmp_path / "same.yaml"
    OmegaConf.save(cfg, yaml)
    s = setup(str(yaml), [], 1)
    model = make_model(s, torch.device("cpu"))
    bench = train_step_flops(model, lambda: loss_of(model, s.batches[0]))
    assert bench > 0 and summary["flops_per_batch"] == bench
    assert summary["train_flops"] == bench * STEPS
    other = setup(str(yaml), ["model.dim=64"], 1)  # and the count is not a constant
    wider = make_model(other, torch.device("cpu"))
    assert train_step_flops(wider, lambda: loss_of(wider, other.batches[0])) > 1.5 * bench
