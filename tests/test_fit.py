"""A tiny real fit from shards built in a temporary folder: loss falls, outputs land."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

from pixword_lit.train import fit


def test_tiny_fit_learns_and_writes_outputs(glyph_shards, tmp_path):
    cfg = tiny_config(glyph_shards, tmp_path, "trainer.max_steps=40", "trainer.val_check_interval=10",
                      "run.ckpt_every_n_steps=20")
    summary = fit(cfg)
    run = tmp_path / "run"
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve][:4] == [10, 20, 30, 40]
    assert curve[-1]["val/loss"] < curve[0]["val/loss"]
    assert curve[-1]["val/pix_loss"] < curve[0]["val/pix_loss"]
    saved = json.loads((run / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in ("config", "git_commit", "seed", "params", "steps", "tokens_seen", "wall_s",
                "pix_tokens_per_s", "val/loss", "val/pix_loss", "val/word_loss", "val/pix_acc",
                "baseline/pix_loss", "param_checksum", "world_size"):
        assert key in saved, key
    assert saved["steps"] == 40 and saved["world_size"] == 1 and saved["params"] > 0
    assert saved["pix_tokens_per_s"] > 0 and saved["tokens_seen"] > 0
    assert 0 <= saved["val/pix_acc"] <= 1 and saved["val/word_loss"] > 0
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"last.ckpt", "best.ckpt", "step0000020.ckpt", "step0000040.ckpt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (run / "pictures" / "val_latest.png").exists()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").exists()
    # the last checkpoint, validated from a fresh process state, reproduces the final metrics
    from pixword_lit.train import validate

    again = validate(str(run / "checkpoints" / "last.ckpt"), [])
    for key in ("val/loss", "val/pix_loss", "val/word_loss", "val/pix_acc", "baseline/pix_loss"):
        assert again[key] == pytest.approx(saved[key], rel=1e-6), key


def test_bf16_mixed_precision_fit(glyph_shards, tmp_path):
    cfg = tiny_config(glyph_shards, tmp_path, "trainer.precision=bf16-mixed", "trainer.max_steps=4",
                      "trainer.val_check_interval=4", "data.val_limit=8")
    summary = fit(cfg)
    assert summary["steps"] == 4 and summary["val/loss"] == summary["val/loss"]  # finite, not NaN
