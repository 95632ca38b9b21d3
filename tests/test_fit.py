"""A tiny real fit from shards built in a temporary folder: loss falls, outputs land."""

from __future__ import annotations

import json
import math
import re
import subprocess

import pytest
import torch
from conftest import tiny_config

from pixword_lit.fit.train import fit
from pixword_lit.system.config import REPO_ROOT

pytestmark = pytest.mark.slow  # real fits: `make test-fast` leaves them out

README_TB_SCALARS = [  # experiments/README.md "TensorBoard": for train and validation, then throughput and lr
    *(f"{split}/{name}" for split in ("train", "val") for name in ("loss", "word_loss", "pix_loss",
                                                                    "pix_acc")),
    "train/pix_tokens_per_s",
]


def tb_tags(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tiny_fit_learns_and_writes_outputs(glyph_shards, tmp_path):
    cfg = tiny_config(glyph_shards, tmp_path, "trainer.max_steps=40", "trainer.val_check_interval=10",
                      "run.ckpt_every_n_steps=20")
    summary = fit(cfg)
    run = tmp_path / "run"
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # one line per validation, the final re-validation of the same weights not repeated
    assert [c["step"] for c in curve] == [10, 20, 30, 40]
    assert curve[-1]["val/loss"] < curve[0]["val/loss"]
    assert curve[-1]["val/pix_loss"] < curve[0]["val/pix_loss"]
    saved = json.loads((run / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in ("config", "git_commit", "seed", "params", "steps", "tokens_seen", "wall_s",
                "pix_tokens_per_s", "val/loss", "val/pix_loss", "val/word_loss", "val/pix_acc",
                "baseline/pix_loss", "param_checksum", "world_size"):
        assert key in saved, key
    if (REPO_ROOT / ".git").exists():  # a git checkout (a source tarball has no commit to record)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", saved["git_commit"] or "")
        assert saved["git_commit"].split("-")[0] == head
    assert saved["steps"] == 40 and saved["world_size"] == 1 and saved["params"] > 0
    assert saved["pix_tokens_per_s"] > 0 and saved["tokens_seen"] > 0
    assert 0 <= saved["val/pix_acc"] <= 1 and saved["val/word_loss"] > 0
    for key in ("val/loss", "val/pix_loss", "val/word_loss", "val/pix_acc"):
        assert saved[key] == curve[-1][key], key  # the summary is the last validation
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"last.ckpt", "best.ckpt", "step0000020.ckpt", "step0000040.ckpt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (run / "pictures" / "val_latest.png").exists()
    assert (run / "config.yaml").exists()
    # the counters travel in checkpoints: the module's as named buffers, the training seconds
    # as the throughput callback's state (callbacks.PixThroughput)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(ckpt["state_dict"]["tokens_seen"]) == saved["tokens_seen"]
    assert int(ckpt["state_dict"]["pix_tokens_seen"]) == saved["pix_tokens_seen"] > 0
    (timer,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("PixThroughput")]
    assert timer["train_seconds"] == pytest.approx(saved["train_s"], abs=0.01)
    assert saved["pix_tokens_per_s"] == pytest.approx(saved["pix_tokens_seen"] / timer["train_seconds"],
                                                      rel=1e-3)
    # TensorBoard holds the tags experiments/README.md lists
    acc = tb_tags(run)
    tags = acc.Tags()
    assert set(README_TB_SCALARS) <= set(tags["scalars"])
    assert any(t.startswith("lr-") for t in tags["scalars"])  # the learning rate
    # Lightning's ThroughputMonitor (callbacks.PixFlopsMonitor), with one FLOP count per batch
    fps = acc.Scalars("train/device/flops_per_sec")
    bps = acc.Scalars("train/device/batches_per_sec")
    assert len(fps) == len(bps) > 10
    per_batch = [f.value / b.value for f, b in zip(fps, bps)]
    assert per_batch[0] > 1e5 and per_batch == pytest.approx([per_batch[0]] * len(per_batch), rel=1e-3)
    assert "val/prediction" in tags["images"]
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")  # the HParams view
    # one point per validation (Lightning counts steps from 0: the point after step 10 is at 9),
    # the final re-validation and the HParams view adding none
    points = acc.Scalars("val/loss")
    assert [e.step for e in points] == [9, 19, 29, 39]
    assert [e.value for e in points] == pytest.approx([c["val/loss"] for c in curve])
    # best.ckpt is the checkpoint of the lowest val/loss
    from pixword_lit.fit.train import validate

    low = min(curve, key=lambda c: c["val/loss"])
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == low["step"]
    assert validate(str(run / "checkpoints" / "best.ckpt"), [])["val/loss"] == pytest.approx(
        low["val/loss"], rel=1e-6)
    # the last checkpoint, validated from a fresh process state, reproduces the final metrics
    again = validate(str(run / "checkpoints" / "last.ckpt"), [])
    for key in ("val/loss", "val/pix_loss", "val/word_loss", "val/pix_acc", "baseline/pix_loss"):
        assert again[key] == pytest.approx(saved[key], rel=1e-6), key


def _linear_output_dtypes(cfg):
    """fit(cfg), recording the dtype of every nn.Linear output computed with autograd on."""
    dtypes = set()

    def hook(module, args, out):
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            dtypes.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        summary = fit(cfg)
    finally:
        handle.remove()
    return summary, dtypes


def test_bf16_mixed_precision_fit(glyph_shards, tmp_path):
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = tiny_config(glyph_shards, tmp_path / precision, f"trainer.precision={precision}",
                          "trainer.max_steps=4", "trainer.val_check_interval=4", "data.val_limit=8")
        summary, dtypes = _linear_output_dtypes(cfg)
        losses = [json.loads(x)["loss"] for x in
                  (tmp_path / precision / "run" / "train_log.jsonl").read_text().splitlines()]
        runs[precision] = (summary, dtypes, losses)
    (s32, d32, l32), (s16, d16, l16) = runs["32-true"], runs["bf16-mixed"]
    assert d32 == {torch.float32} and d16 == {torch.bfloat16}  # bf16 autocast really ran
    assert s16["steps"] == 4 and len(l16) == 4
    assert all(math.isfinite(x) for x in [*l16, s16["val/loss"], s16["val/pix_loss"]])
    # same seed, data and initial weights: bf16 matmuls (8-bit mantissa) change the loss by
    # well under 2%; a broken cast or scale would not
    assert l16 == pytest.approx(l32, rel=2e-2)
    assert s16["val/loss"] == pytest.approx(s32["val/loss"], rel=2e-2)


def test_checkpoint_with_unnamed_counters_still_loads_and_resumes(glyph_shards, tmp_path):
    """Checkpoints written before the counters had names (one buffer `seen` = [elements,
    pix tokens, seconds]) load, and resume with their counts and training seconds."""
    from pixword_lit.system.lit_module import PixWordLit

    cfg = tiny_config(glyph_shards, tmp_path, "trainer.max_steps=3", "trainer.val_check_interval=3",
                      "data.val_limit=4", "run.pictures=0")
    first = fit(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    ckpt = torch.load(ckpts / "last.ckpt", weights_only=True)
    sd = ckpt["state_dict"]
    seen = torch.stack([sd.pop("tokens_seen"), sd.pop("pix_tokens_seen"),
                        torch.tensor(100.0, dtype=torch.float64)])  # 100 s trained before
    sd["seen"] = seen
    ckpt["callbacks"] = {k: v for k, v in ckpt["callbacks"].items() if not k.startswith("PixThroughput")}
    torch.save(ckpt, ckpts / "old.ckpt")
    module = PixWordLit.load_from_checkpoint(ckpts / "old.ckpt", weights_only=True)
    assert int(module.tokens_seen) == first["tokens_seen"]
    assert int(module.pix_tokens_seen) == first["pix_tokens_seen"]
    cfg.trainer.max_steps = 5
    resumed = fit(cfg, resume=str(ckpts / "old.ckpt"))
    assert resumed["steps"] == 5 and resumed["tokens_seen"] > first["tokens_seen"]
    assert resumed["train_s"] > 100.0
