"""Settings around a run: relative data paths, and the learning-rate schedule on --resume."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from pixword_lit.data.shards import DataError, resolve_shards
from pixword_lit.fit.train import fit


def test_missing_relative_data_path_names_key_paths_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data paths are relative to the current directory
    with pytest.raises(DataError) as err:
        resolve_shards("data/glyphs/train", None, "mixed", "data.train")
    msg = str(err.value)
    assert msg.startswith("data.train: 'data/glyphs/train' does not exist")
    assert str(tmp_path / "data" / "glyphs" / "train") in msg
    assert "`pixword prep glyphs --out data/glyphs`" in msg and "\n" not in msg
    with pytest.raises(DataError, match="data.val: 'x' does not exist"):  # a pattern: its folder
        resolve_shards("x/shard-{000000..000001}.tar", None, "mixed", "data.val")


def test_resume_with_another_schedule_length_warns(glyph_shards, tmp_path, capsys):
    common = ("trainer.val_check_interval=100", "data.val_limit=4", "run.pictures=0")
    fit(tiny_config(glyph_shards, tmp_path, *common, "trainer.max_steps=2"))
    fit(tiny_config(glyph_shards, tmp_path, *common, "trainer.max_steps=3"), resume="last")
    err = capsys.readouterr().err
    assert "learning-rate schedule changes at step 2" in err
    assert "over 2 steps" in err and "over 3 steps" in err and "optim.decay_steps=2" in err
    # with the cosine length fixed, a longer run keeps the schedule: no warning
    fit(tiny_config(glyph_shards, tmp_path, *common, "trainer.max_steps=4", "optim.decay_steps=3"),
        resume="last")
    assert "schedule changes" not in capsys.readouterr().err
