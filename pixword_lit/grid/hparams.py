"""What a grid's runs declare to TensorBoard's HParams view: the keys that vary
across the grid's runs and the grid's metrics, written at launch to
`<root>/hparams_config.json`, which each run's `fit` reads (fit/hparams_view.py).

Keys: every flattened config key whose value differs between the grid's runs (run.name and
run.dir aside: they name the run), plus, for an axis whose values are labelled or several-key
mappings (model: {label: d32, dim: 32, ...}), the axis key itself with the cell's label. Numbers are typed
float, anything else a string. Metrics: the validation metrics every run reports, then the
image-likelihood ones when some run has every pixel scored (dense objective, or full causal
attention, whose evaluation scores them all), for the foldings the grid uses.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from pixword_lit.files import write_json
from pixword_lit.fit.hparams_view import GRID_FILE
from pixword_lit.grid.spec import Grid, run_overrides
from pixword_lit.grid.tables import fmt_axis
from pixword_lit.system.config import ConfigError, flatten, load_config

NAMING = {"run.name", "run.dir"}
BASE_METRICS = ["val/loss", "val/pix_loss", "val/pix_acc", "baseline/pix_loss", "val/word_loss",
                "val/fold_psnr"]


def declaration(grid: Grid, root: Path) -> dict:
    """{"hparams": [{name, type, values}], "metrics": [...], "runs": {run: {name: value}}}."""
    runs, configs = grid.runs(), {}
    for run in runs:
        try:
            cfg = load_config(grid.base, run_overrides(run, root))
            configs[run.name] = flatten(OmegaConf.to_container(cfg, resolve=True))
        except ConfigError:  # fit reports it for that run
            continue
    per_run: dict[str, dict] = {r.name: {} for r in runs if r.name in configs}
    for key, values in grid.axes.items():  # an axis of labelled or several-key mappings:
        named = [v for v in values if isinstance(v, dict) and ("label" in v or len(v) > 1)]
        for run in runs if named else []:  # the axis key itself, valued by the cell's label
            if run.name in per_run:
                per_run[run.name][key] = fmt_axis(run.axes[key])
    keys = sorted({k for c in configs.values() for k in c} - NAMING)
    for k in keys:
        values = [c.get(k) for c in configs.values()]
        if len({repr(v) for v in values}) > 1:
            for name, c in configs.items():
                per_run[name][k] = c.get(k)
    hparams = []
    for name in dict.fromkeys(k for r in per_run.values() for k in r):
        values = [r.get(name) for r in per_run.values() if r.get(name) is not None]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        for r in per_run.values():
            if r.get(name) is not None:
                r[name] = float(r[name]) if numeric else _text(r[name])
        distinct = list(dict.fromkeys(r[name] for r in per_run.values() if r.get(name) is not None))
        hparams.append({"name": name, "type": "float" if numeric else "str", "values": distinct})
    return {"grid": grid.name, "hparams": hparams, "metrics": grid_metrics(configs.values()),
            "runs": per_run}


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(list(v)) if isinstance(v, tuple) else str(v)


def grid_metrics(configs) -> list[str]:
    """The metrics the grid's runs report (system/lit_module.py on_validation_epoch_end)."""
    configs = list(configs)
    scored = [c for c in configs if c.get("model.objective.name") == "dense"
              or c.get("model.attention.name") == "full_causal"]
    metrics = list(BASE_METRICS)
    if scored:
        metrics.append("val/pix_nll_all")
        if any(c.get("model.folding.name") != "palette" for c in scored):
            metrics += ["val/bpd_folded", "val/bpd_8bit"]
        if any(c.get("model.folding.name") == "palette" for c in scored):
            metrics.append("val/bpd_palette")
    return metrics


def write_declaration(grid: Grid, root: Path) -> Path:
    path = Path(root) / GRID_FILE
    write_json(path, declaration(grid, root), indent=1)
    return path
