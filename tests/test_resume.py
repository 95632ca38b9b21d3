"""Exact resume from every kind of checkpoint pixword writes: the matrix of resume_matrix.py
(issue 9). Each case compares a resumed run with the uninterrupted one: per-step losses
(1e-6), which batch of which epoch each step trained on, parameter checksum, token counters,
epochs, final val/loss, and the numbers drawn from torch's, numpy's and Python's global RNGs.
"""

from __future__ import annotations

import json

import pytest
from resume_matrix import VARIANT_KINDS, VARIANTS, cases, check_case, folder


def _params(strategy, *marks):
    return [pytest.param(strategy, *c, id=f"{strategy}-{c[0]}-w{c[1]}-{c[2]}", marks=marks)
            for c in cases(strategy)]


@pytest.mark.parametrize("strategy,dataset,workers,kind", [
    *_params("single"),
    *_params("ddp", pytest.mark.multiproc),
    *_params("fsdp", pytest.mark.multiproc),
])
def test_resume_is_exact(matrix_runs, strategy, dataset, workers, kind):
    check_case(matrix_runs(strategy), dataset, workers, kind)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_resume_is_exact_for_the_dense_objective_full_causal_and_a_palette(matrix_runs, variant, kind):
    root = matrix_runs("single")
    check_case(root, "small", 0, kind, variant)
    # the variant really ran: its component is in the run's config
    config = (root / folder("small", 0, variant) / "reference" / "config.yaml").read_text()
    name = VARIANTS[variant][0].split("=")[1]
    assert f"name: {name}" in config


@pytest.mark.slow
def test_partial_checkpoint_writes_are_ignored_and_cleared(glyph_shards, tmp_path, capsys):
    """What a kill during a checkpoint write leaves (planted, so it does not depend on when a
    kill lands): a partial single-file write (NAME.tmp), a half-written sharded folder
    (NAME.tmp/), and a sharded swap cut between its two renames (last.ckpt moved to
    last.ckpt.old, the new one still NAME.tmp/). --resume last ignores and clears the partial
    ones, puts last.ckpt back, and continues exactly."""
    import torch
    from conftest import tiny_config

    from pixword_lit.fit.train import fit

    common = ("trainer.val_check_interval=100", "data.val_limit=4", "run.ckpt_every_n_steps=2",
              "optim.decay_steps=6", "run.pictures=0")
    fit(tiny_config(glyph_shards, tmp_path / "straight", *common, "trainer.max_steps=6"))
    fit(tiny_config(glyph_shards, tmp_path / "cut", *common, "trainer.max_steps=4"))
    ckpts = tmp_path / "cut" / "run" / "checkpoints"
    (ckpts / "step0000006.ckpt.tmp").write_bytes(b"PK\x03\x04 half a zip")
    half = ckpts / "step0000006.ckpt.tmp.d"
    for tmp in (ckpts / "last.ckpt.tmp", half):
        tmp.mkdir()
        (tmp / "__0_0.distcp").write_bytes(b"\x00" * 100)  # no .metadata, no meta.pt
    half.rename(ckpts / "step0000008.ckpt.tmp")
    (ckpts / "last.ckpt").rename(ckpts / "last.ckpt.old")
    summary = fit(tiny_config(glyph_shards, tmp_path / "cut", *common, "trainer.max_steps=6"),
                  resume="last")
    out = capsys.readouterr().out
    assert "step 4)" in out and "removing partial checkpoint" in out
    assert not list(ckpts.glob("*.tmp")) and not list(ckpts.glob("*.old"))
    straight = json.loads((tmp_path / "straight" / "run" / "summary.json").read_text())
    assert summary["param_checksum"] == pytest.approx(straight["param_checksum"], rel=1e-9)
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6
    # checkpoints hold plain types only (RNG states included)
    ckpt = torch.load(ckpts / "step0000004.ckpt", weights_only=True)
    assert {"torch", "numpy", "python"} <= set(ckpt["rng_states"])
