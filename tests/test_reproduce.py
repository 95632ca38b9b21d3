"""`pixword grid GRID --reproduce [CELL]` (issue 25): one seed of one cell runs again at this
commit and is printed beside the committed table; a changed committed number shows as moved;
a grid without a committed table is one line and a non-zero exit."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import TINY_GRID

from pixword_lit.cli import main
from pixword_lit.grid.compare import collect, write_results
from pixword_lit.grid.reproduce import pick_run, reproduce, verdict
from pixword_lit.grid.spec import load_grid
from pixword_lit.system.config import REPO_ROOT, ConfigError

TINY = {**TINY_GRID, "trainer.max_steps": 3, "trainer.val_check_interval": 3,
        "data.val_limit": 8}


def tiny_grid(tmp_path, shards):
    fixed = {**TINY, "data.train": f"{shards}/train", "data.val": f"{shards}/val"}
    body = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in fixed.items())
    path = tmp_path / "tiny.yaml"
    path.write_text(f"base: {REPO_ROOT / 'experiments' / 'quickstart.yaml'}\nfixed:\n{body}\n"
                    "axes:\n  optim.lr: [0.003, 0.001]\nseeds: [0, 1]\nthreads: 1\n")
    return load_grid(path)


def test_pick_run_defaults_to_the_first_cell_at_the_first_seed(tmp_path):
    grid = tiny_grid(tmp_path, tmp_path)
    assert pick_run(grid, None).name == "lr-0.003_s0"
    assert pick_run(grid, "lr-0.001").name == "lr-0.001_s0"
    assert pick_run(grid, "lr-0.001_s1").name == "lr-0.001_s1"
    with pytest.raises(ConfigError, match="'lr-9' is not a cell of grid tiny.*lr-0.003, lr-0.001"):
        pick_run(grid, "lr-9")


@pytest.mark.slow
def test_reproduce_against_a_committed_table(glyph_shards, tmp_path):
    grid = tiny_grid(tmp_path, glyph_shards)
    results, lines = tmp_path / "results", []
    # no committed table yet: refused before anything runs
    with pytest.raises(ConfigError, match="no committed table for grid tiny"):
        reproduce(grid, None, tmp_path / "a", allow_dirty=True, results=results)
    assert not (tmp_path / "a").exists()

    # "commit" a table: the first cell's first seed, run and compared
    (results / "tiny").mkdir(parents=True)
    (results / "tiny" / "runs.csv").write_text("cell,optim.lr,seed,run,val/loss,error\n"
                                               "lr-0.003,0.003,0,lr-0.003_s0,1.0,\n")
    first = reproduce(grid, None, tmp_path / "a", allow_dirty=True, results=results, echo=lines.append)
    assert first["failed"] is None and first["run"] == "lr-0.003_s0"
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir() and p.name[0] != ".") == \
        ["logs", "lr-0.003_s0"]  # one run of the grid's 4
    write_results(collect([str(tmp_path / "a")]), results / "tiny")

    # again, in a fresh root: every metric the table prints comes out the same
    lines.clear()
    again = reproduce(grid, None, tmp_path / "b", allow_dirty=True, results=results, echo=lines.append)
    assert again["moved"] == [] and {"val/loss", "val/pix_loss", "params"} <= set(again["same"])
    assert any("reproduce to the printed digit" in ln for ln in lines)
    assert "reproduce to the printed digit" in (tmp_path / "b" / again["run"] / "reproduce.txt").read_text()

    # a committed number changed by hand: that metric, and only it, moved
    table = list(csv.DictReader(open(results / "tiny" / "runs.csv")))
    table[0]["val/pix_loss"] = str(float(table[0]["val/pix_loss"]) + 1e-3)
    with open(results / "tiny" / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(table[0]))
        w.writeheader()
        w.writerows(table)
    lines.clear()
    moved = reproduce(grid, None, tmp_path / "b", allow_dirty=True, results=results, echo=lines.append)
    assert moved["moved"] == ["val/pix_loss"]
    assert any("finished before, skipped" in ln for ln in lines)  # same commit: not run again
    row = next(ln for ln in lines if ln.startswith("val/pix_loss "))
    assert row.split()[-1] == "moved" and "-0.001" in row

    # only a summary.csv (means over seeds): the difference in the committed seeds' std
    (results / "tiny" / "runs.csv").unlink()
    lines.clear()
    fallback = reproduce(grid, None, tmp_path / "b", allow_dirty=True, results=results, echo=lines.append)
    assert any("not this seed alone" in ln for ln in lines)
    assert fallback["moved"] == [] and "val/loss" in fallback["same"]  # one seed: its own mean


def test_two_seed_means_give_the_seeds_back():
    """A committed mean ± std over 2 seeds, printed to 6 digits, holds both seeds: a rerun of
    either is `same`; a value off by more than the printed digits moved."""
    seeds = np.array([3.4371672, 3.4233927])
    mean, std = float(f"{seeds.mean():.6g}"), float(f"{seeds.std(ddof=1):.6g}")
    assert verdict(mean, seeds[0], std, 2)[0] == "same"
    assert verdict(mean, seeds[1], std, 2)[0] == "same"
    group, text = verdict(mean, seeds[0] + 2e-4, std, 2)
    assert group == "moved" and text.startswith("moved, +0.0002 from the nearer seed")
    assert verdict(mean, seeds[0], std, 3)[0] == "moved"  # 3 seeds: no way back to one
    assert verdict(83225.0, 83205.0, float("nan"), 2)[0] == "unknown"  # a count: no std


def test_cli_reproduce_without_a_table_is_one_line(tmp_path, monkeypatch, capsys):
    grid = tiny_grid(tmp_path, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["grid", str(grid.path), "--reproduce", "lr-0.001", "--allow-dirty"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results/tiny/runs.csv" in err
