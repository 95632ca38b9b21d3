"""TensorBoard's HParams view of a grid (issue 25): every run of a 2-cell grid declares the
same experiment, the grid's axis and metrics, so the table opens on the axis rather than on
the constant keys; read back from the runs' event files."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_GRID

from pixword_lit.fit.hparams_view import GRID_FILE
from pixword_lit.grid.launch import run_grid
from pixword_lit.grid.spec import load_grid
from pixword_lit.system.config import REPO_ROOT

TINY = {**TINY_GRID, "trainer.max_steps": 2, "trainer.val_check_interval": 2,
        "data.val_limit": 4}


def hparams_records(tb) -> dict:
    """tag -> HParamsPluginData of the run's event files (experiment, session start/end)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = {}
    for f in sorted(tb.glob("events.out.tfevents.*")):
        for e in EventFileLoader(str(f)).Load():
            for v in e.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    out[v.tag] = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
    return out


def shown_by_default(experiment) -> list[str]:
    """The hparams the HParams table shows before anything is ticked: TensorBoard's backend
    sorts them by (not differs, name), its page ticks the first five
    (tf-hparams-query-pane: `Math.min(5, hparams.length)`)."""
    infos = sorted(experiment.hparam_infos, key=lambda h: (not h.differs, h.name))
    return [h.name for h in infos[:5]]


@pytest.mark.slow
def test_grid_runs_declare_the_axis_and_metrics(glyph_shards, tmp_path):
    fixed = {**TINY, "data.train": f"{glyph_shards}/train", "data.val": f"{glyph_shards}/val"}
    body = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in fixed.items())
    path = tmp_path / "two.yaml"
    path.write_text(f"base: {REPO_ROOT / 'experiments' / 'quickstart.yaml'}\nfixed:\n{body}\naxes:\n"
                    "  model.embedding:\n    - {name: pix_table}\n    - {name: factorized}\n"
                    "seeds: [0]\nthreads: 1\n")
    root = tmp_path / "root"
    grid = load_grid(path)
    assert run_grid(grid, root, allow_dirty=True, echo=lambda *a: None) == {"finished": 2}
    decl = json.loads((root / GRID_FILE).read_text())
    assert [h["name"] for h in decl["hparams"]] == ["model.embedding.name"]  # seeds: one, constant

    experiments = []
    for run in grid.runs():
        rec = hparams_records(root / run.name / "tb")
        exp = rec["_hparams_/experiment"].experiment
        experiments.append(exp)
        assert shown_by_default(exp) == ["model.embedding.name"]  # the axis, not data.batch_size
        info = exp.hparam_infos[0]
        assert info.differs and [v.string_value for v in info.domain_discrete.values] == \
            ["pix_table", "factorized"]
        metrics = [m.name.tag for m in exp.metric_infos]
        assert metrics[:2] == ["val/loss", "val/pix_loss"] and "val/pix_nll_all" not in metrics
        # the session holds the run's value of the axis and, unshown, the constant keys
        start = rec["_hparams_/session_start_info"].session_start_info.hparams
        assert start["model.embedding.name"].string_value == run.axes["model.embedding"]["name"]
        assert start["data.batch_size"].number_value == 4
        summary = json.loads((root / run.name / "summary.json").read_text())
        assert set(metrics) <= {k for k in summary if k.startswith(("val/", "baseline/"))}
    # TensorBoard shows one run's declaration for all: they must be the same
    assert experiments[0] == experiments[1]


def test_a_run_outside_a_grid_declares_its_whole_config(glyph_shards, tmp_path):
    """No grid file beside the run: every config key is declared, as before."""
    from conftest import tiny_config

    from pixword_lit.fit.train import fit

    (tmp_path / GRID_FILE).write_text(json.dumps({"runs": {"another": {}}, "hparams": [], "metrics": []}))
    cfg = tiny_config(glyph_shards, tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=2",
                      "data.val_limit=4", "run.pictures=0")
    fit(cfg)
    exp = hparams_records(tmp_path / "run" / "tb")["_hparams_/experiment"].experiment
    names = {h.name for h in exp.hparam_infos}
    assert {"data.batch_size", "model.dim", "optim.lr"} <= names
    assert not any(h.differs for h in exp.hparam_infos)
