"""Grids and compare: expansion order and names, the predefined grids, every YAML loads, and a
tiny real grid with one broken run (the good run finishes, the bad one is marked failed, a
second pass skips the finished one and retries the failed one), then compare's outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pixword_lit.cli import main
from pixword_lit.grid.compare import collect, power_law_fit, write_results
from pixword_lit.grid.launch import run_grid
from pixword_lit.grid.spec import (
    GRID_DIR,
    check_configs,
    load_grid,
    load_state,
    predefined,
    run_status,
    summary_problem,
)
from pixword_lit.system.config import REPO_ROOT, ConfigError, load_config

PREDEFINED = ["attention", "embedding", "fold", "reading_small", "scaling",
              "scaling_lr", "window"]
QUICKSTART = REPO_ROOT / "experiments" / "quickstart.yaml"


def write_grid(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(text)
    return p


def test_expansion_order_and_names(tmp_path):
    g = load_grid(write_grid(tmp_path, f"""
base: {QUICKSTART}
fixed: {{trainer.max_steps: 5}}
axes:
  model.window_size: [4, 8]
  model.folding: [{{name: uniform, factor: 32}}, {{name: palette, colors: 64, label: pal}}]
seeds: [0, 1]
"""))
    runs = g.runs()
    cells = ["window_size-4_folding-uniform-factor32", "window_size-4_folding-pal",
             "window_size-8_folding-uniform-factor32", "window_size-8_folding-pal"]
    # seeds outermost, then the axes' product with the last axis fastest
    assert [r.name for r in runs] == [f"{c}_s{s}" for s in (0, 1) for c in cells]
    assert runs[1].overrides == ["trainer.max_steps=5", "model.window_size=4",
                                 "model.folding.name=palette", "model.folding.colors=64"]
    assert [r.seed for r in runs] == [0] * 4 + [1] * 4
    nested = load_grid(write_grid(tmp_path, f"""
base: {QUICKSTART}
axes:
  model: [{{dim: 64, attention: {{name: full_causal}}}}]
""")).runs()[0]
    assert nested.overrides == ["model.dim=64", "model.attention.name=full_causal"]
    assert nested.name == "model-dim64-attention-name-full_causal_s0"
    assert g.name == "g" and g.default_root() == Path("runs/grids/g")


def test_grid_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown grid key 'axis'"):
        load_grid(write_grid(tmp_path, f"base: {QUICKSTART}\naxis: {{}}\n"))
    with pytest.raises(ConfigError, match="duplicate run names"):
        load_grid(write_grid(tmp_path, f"base: {QUICKSTART}\naxes: {{a.b: [1, 1]}}\n")).runs()
    with pytest.raises(ConfigError, match="predefined: attention"):
        load_grid("no_such_grid")


def test_list_shows_the_predefined_grids(capsys):
    assert predefined() == PREDEFINED
    assert main(["grid", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: " in out for name in PREDEFINED)


@pytest.mark.parametrize("name", PREDEFINED)
def test_dry_run_prints_every_command(name, capsys, tmp_path):
    g = load_grid(name)
    assert len(g.seeds) >= 2 or len(g.repeat.get("seeds", [])) >= 1  # some cells seeded twice
    assert main(["grid", name, "--dry-run", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count(" -m pixword_lit.cli fit ") == len(g.runs())
    assert "INVALID" not in out and "--overwrite" in out
    first = g.path.read_text().splitlines()
    assert first[0].startswith("# ") and any(f"pixword grid experiments/grids/{name}.yaml" in ln
                                            for ln in first[:5])


def test_every_experiment_yaml_and_grid_run_loads():
    """Stale keys fail here: every experiment file and every run of every grid is loaded."""
    experiments = sorted((REPO_ROOT / "experiments").glob("*.yaml"))
    assert QUICKSTART in experiments
    for path in experiments:
        load_config(path)
    for path in sorted(GRID_DIR.glob("*.yaml")):
        assert check_configs(load_grid(path)) == {}, path


def test_power_law_fit_recovers_the_exponent():
    n = np.array([1e5, 3e5, 1e6, 3e6])
    fit = power_law_fit(n, 3.0 * n**-0.25)
    assert fit["alpha"] == pytest.approx(0.25) and fit["a"] == pytest.approx(3.0)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = 3.0 * n**-0.25 * np.exp(np.random.default_rng(0).normal(0, 0.01, 4))
    assert power_law_fit(n, noisy)["alpha"] == pytest.approx(0.25, abs=0.03)


def test_nan_or_unfinished_summary_is_not_finished():
    assert summary_problem(None) == "no summary.json"
    assert "non-finite" in summary_problem({"status": "finished", "val/loss": float("nan")})
    assert summary_problem({"status": "running", "val/loss": 1.0}) is not None
    assert summary_problem({"status": "finished", "val/loss": 1.0}) is None


@pytest.mark.slow
def test_tiny_grid_with_a_broken_run(glyph_shards, tmp_path):
    tiny = {
        "data.train": f"{glyph_shards}/train", "data.val": f"{glyph_shards}/val",
        "data.batch_size": 4, "data.num_workers": 0, "data.max_seq_len": 64,
        "model.dim": 32, "model.n_heads": 4, "model.n_kv_heads": 2, "model.image_layers": 1,
        "model.decoder_layers": 1, "model.image_size": 16, "model.window_size": 4,
        "trainer.max_steps": 4, "trainer.val_check_interval": 2, "trainer.accelerator": "cpu",
        "trainer.enable_progress_bar": False, "run.ckpt_every_n_steps": None, "run.pictures": 1,
    }
    fixed = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in tiny.items())
    path = write_grid(tmp_path, f"""# tiny
base: {QUICKSTART}
fixed:
{fixed}
axes:
  model.folding:
    - {{name: palette, colors: 16, sample_pixels: 2000, iters: 3, label: pal16}}
    - {{name: uniform, factor: 3}}   # broken on purpose: not a power of two
seeds: [0]
""")
    root = tmp_path / "root"
    grid = load_grid(path)
    good, bad = grid.runs()
    # allow_dirty: a developer's checkout may have uncommitted changes (test_launch tests the rule)
    assert run_grid(grid, root, allow_dirty=True, echo=lambda *a: None) == {"finished": 1, "failed": 1}
    state = load_state(root)
    assert state["runs"][good.name]["status"] == "finished"
    assert state["runs"][bad.name]["status"] == "failed"
    assert "model.folding.factor" in state["runs"][bad.name]["error"]
    summary = json.loads((root / good.name / "summary.json").read_text())
    assert summary["status"] == "finished" and math.isfinite(summary["val/loss"])
    # the palette is fitted once, kept in the run folder and in the checkpoint
    palette = json.loads((root / good.name / "palette.json").read_text())
    assert len(palette) == 16
    ckpt = torch.load(root / good.name / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["folding_state"]["palette"] == palette

    assert run_status(grid, good, root, load_state(root)) == "finished"  # a second launch skips it
    # (test_launch launches twice: the finished run skipped, the failed ones tried again)

    # compare: one row per cell, the failed one with its error; plots written
    out = tmp_path / "results"
    res = write_results(collect([str(root)]), out)
    assert {f.name for f in res["files"]} == {"runs.csv", "summary.csv", "paired.csv", "summary.md",
                                              "pix_loss_curves.png", "final_metrics.png"}
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["cell"] for r in rows] == [good.cell, bad.cell]
    assert float(rows[0]["val/loss_mean"]) == pytest.approx(summary["val/loss"], rel=1e-5)
    assert rows[0]["params"] == str(summary["params"]) and rows[0]["seeds"] == "1"
    assert rows[1]["seeds"] == "0" and "model.folding.factor" in rows[1]["errors"]
    assert "1 failed" in (out / "summary.md").read_text()

    # the HParams view of the run shows the same final numbers as summary.json and the table
    assert hparams_metrics(root / good.name / "tb") == {"val/loss": pytest.approx(summary["val/loss"])}


def hparams_metrics(tb: Path) -> dict:
    """The HParams view's value of each metric it declares (here: val/loss): the last event of
    that scalar tag, as TensorBoard's hparams plugin reads it."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    metrics, last = [], {}
    for f in sorted(tb.glob("events.out.tfevents.*")):
        for e in EventFileLoader(str(f)).Load():
            for v in e.summary.value:
                if v.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    metrics = [m.name.tag for m in data.experiment.metric_infos]
                elif v.HasField("simple_value"):
                    last[v.tag] = v.simple_value
                elif v.HasField("tensor") and v.tensor.float_val:
                    last[v.tag] = v.tensor.float_val[0]
    assert "val/loss" in metrics and "val/pix_loss" in metrics
    return {"val/loss": last["val/loss"]}


def test_compare_run_dirs_with_a_power_law(tmp_path, capsys):
    """Run folders given directly (no grid): seeds grouped by name, the fit drawn and tabled."""
    for params in (1e5, 4e5, 1.6e6):
        for seed in (0, 1):
            d = tmp_path / "runs" / f"d{int(params)}_s{seed}"
            d.mkdir(parents=True)
            loss = 3.0 * params**-0.25 * (1 + 0.001 * seed)
            (d / "summary.json").write_text(json.dumps(
                {"status": "finished", "seed": seed, "params": params, "val/loss": loss,
                 "val/pix_loss": loss, "git_commit": "abc", "wall_s": 1.0}))
            (d / "metrics.jsonl").write_text(json.dumps({"step": 5, "val/pix_loss": loss}) + "\n")
    out = tmp_path / "res"
    assert main(["compare", str(tmp_path / "runs"), "--out", str(out), "--power-law", "val/loss"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["cell"] for r in rows] == ["d100000", "d1600000", "d400000"]  # folder order
    assert all(r["seeds"] == "2" for r in rows)
    assert float(rows[0]["power_law_alpha"]) == pytest.approx(0.25, abs=1e-3)
    assert "alpha = 0.25" in (out / "summary.md").read_text()
    assert (out / "power_law.png").stat().st_size > 0


def test_named_axes_and_repeated_cells(tmp_path):
    """A `@name` axis sets dotted keys from the config's root; `repeat` adds seeds to the
    named cells only, after the others; a repeat naming no cell is an error."""
    text = (f"base: {QUICKSTART}\naxes:\n  '@size':\n"
            "    - {label: a, model.dim: 32, optim.lr: 0.004}\n"
            "    - {label: b, model.dim: 64, optim.lr: 0.002}\n"
            "  trainer.max_steps: [10, 20]\nseeds: [0]\n"
            "repeat: {seeds: [0, 1, 2], cells: [size-b_max_steps-20]}\n")
    runs = load_grid(write_grid(tmp_path, text)).runs()
    assert [r.name for r in runs][-2:] == ["size-b_max_steps-20_s1", "size-b_max_steps-20_s2"]
    assert len(runs) == 6
    assert runs[1].overrides == ["model.dim=32", "optim.lr=0.004", "trainer.max_steps=20"]
    bad = text.replace("cells: [size-b_max_steps-20]", "cells: [size-c]")
    with pytest.raises(ConfigError, match="repeat: no cell named 'size-c'"):
        load_grid(write_grid(tmp_path, bad)).runs()
    with pytest.raises(ConfigError, match="must be a mapping of dotted keys"):
        load_grid(write_grid(tmp_path, f"base: {QUICKSTART}\naxes: {{'@x': [1]}}\n")).runs()
