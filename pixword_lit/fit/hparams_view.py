"""TensorBoard's HParams view of a run.

A run on its own declares its whole flattened config, as before. A run of a grid declares
what the grid declares in `<grid root>/hparams_config.json` (grid/hparams.py writes it at
launch): the keys that vary across the grid's runs (its axes, an axis of mappings also under
its own key with the cell's label, and run.seed) and the grid's metrics, the same in every
run of the grid, since TensorBoard shows one run's declaration for all of them. Constant keys
(data.batch_size, ...) stay in each run's session but are no columns: the HParams table
opens with the grid's axes as its columns (TensorBoard shows the first five hparams, sorted
by name, and the first five metrics).
"""

from __future__ import annotations

import json
from pathlib import Path

GRID_FILE = "hparams_config.json"
TYPES = {"float": "DATA_TYPE_FLOAT64", "str": "DATA_TYPE_STRING"}


def grid_declaration(run_dir: Path, run_name: str) -> dict | None:
    """The grid's declaration when this run is one of its runs (a file beside the run)."""
    try:
        decl = json.loads((Path(run_dir).parent / GRID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return decl if run_name in (decl.get("runs") or {}) else None


def experiment_summary(hparams: list[dict], metrics: list[str]):
    """`_hparams_/experiment`: the declared hparams ({name, type, values}: a discrete domain)
    and metrics, every hparam marked as differing across the runs."""
    from google.protobuf import struct_pb2
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos = []
    for h in hparams:
        field = "number_value" if h["type"] == "float" else "string_value"
        domain = struct_pb2.ListValue(values=[struct_pb2.Value(**{field: v}) for v in h["values"]])
        infos.append(api_pb2.HParamInfo(name=h["name"], type=api_pb2.DataType.Value(TYPES[h["type"]]),
                                        domain_discrete=domain, differs=True))
    exp = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics])
    content = plugin_data_pb2.HParamsPluginData(experiment=exp, version=metadata.PLUGIN_DATA_VERSION)
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=smd)])


def log_hparams_view(logger, hp: dict, metrics: dict, run_dir: Path, run_name: str) -> None:
    """TensorBoard's HParams view: the config, and the final metrics, which TensorBoard reads
    as the last point of each metric's own curve. (logger.log_hyperparams would also write
    the metrics again as points at step 0, drawing every val/ curve back to its start.)"""
    from torch.utils.tensorboard.summary import hparams

    writer = logger.experiment._get_file_writer()
    decl = grid_declaration(run_dir, run_name)
    if decl is None:
        for part in hparams(hp, metrics):
            writer.add_summary(part)
        return
    mine = decl["runs"][run_name]  # this run's value of each declared key, typed as declared
    session = {k: v for k, v in hp.items() if k not in mine}
    session.update({k: v for k, v in mine.items() if v is not None})
    _, start, end = hparams(session, {})
    for part in (experiment_summary(decl["hparams"], decl["metrics"]), start, end):
        writer.add_summary(part)
