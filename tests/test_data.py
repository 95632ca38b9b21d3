"""The data order guarantee (see pixword_lit/data/stream.py): every unit exactly once per epoch across
ranks, equal batch counts, independence from the worker count, resume at a batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import tiny_config

from pixword_lit.data import stream as data_mod
from pixword_lit.data.shards import ShardSet
from pixword_lit.data.stream import DataPosition, PixLoader, ShardStream
from pixword_lit.model.tokens import IGNORE
from pixword_lit.system.build import build_parts


def _ids(batch):
    """Identify the units of a batch by their (targets) rows; placeholders score nothing."""
    rows = [t.tolist() for t in batch["targets"] if (t != IGNORE).any()]
    return [tuple(r[: max(i for i, x in enumerate(r) if x != IGNORE) + 1]) for r in rows]


def _run(stream, workers, monkeypatch):
    """Iterate as a DataLoader would: worker j yields its batches, collected round-robin."""
    per_worker = []
    for j in range(workers):
        info = SimpleNamespace(num_workers=workers, id=j)
        monkeypatch.setattr(data_mod, "get_worker_info", lambda info=info: info)
        per_worker.append(list(stream))
    out = []
    for i in range(max(len(w) for w in per_worker)):
        out += [w[i] for w in per_worker if i < len(w)]
    return out


@pytest.fixture
def parts(glyph_shards, tmp_path):
    return build_parts(tiny_config(glyph_shards, tmp_path), None)


def _uneven(parts) -> ShardSet:
    """The 96 training samples seen as 3 uneven shards is not possible without re-writing,
    so take the one shard 3 times under different names with fewer units each."""
    url = parts.train.urls[0]
    return ShardSet([url, url, url], [40, 31, 25], parts.train.index_path)


# every unit exactly once, equal batch counts, the order's structure: tests/test_data_order.py


def test_uneven_shard_counts_split_without_loss(parts, monkeypatch):
    shards = _uneven(parts)  # 96 units in 3 shards of 40, 31, 25
    rows = []
    for rank in range(2):
        stream = ShardStream(shards, parts.builder, 4, 0, True, rank, 2)
        assert len(stream) == 12  # ceil(96 / (2 x 4)) global batches, one micro-batch each
        rows += [tuple(r) for b in stream.rank_batches(0) for r in b.tolist()]
        assert len(_run(stream, 2, monkeypatch)) == 12
    assert len(rows) == len(set(rows)) == 96


def test_batches_do_not_depend_on_worker_count(parts, monkeypatch):
    one = _run(ShardStream(parts.train, parts.builder, 4, 3, True), 1, monkeypatch)
    three = _run(ShardStream(parts.train, parts.builder, 4, 3, True), 3, monkeypatch)
    assert [_ids(b) for b in one] == [_ids(b) for b in three]


def test_resume_continues_with_the_next_unseen_batch(parts, monkeypatch):
    full = _run(ShardStream(parts.train, parts.builder, 4, 3, True), 2, monkeypatch)
    stream = ShardStream(parts.train, parts.builder, 4, 3, True)
    loader = PixLoader(stream, 0, trained=None)
    loader.load_state_dict({"epoch": 0, "batches_done": 9, "world_size": 1})
    loader.trained = lambda: DataPosition(0, 0)
    monkeypatch.setattr(data_mod, "get_worker_info", lambda: None)
    resumed = list(iter(loader))
    assert [int(b["batch_index"]) for b in resumed] == list(range(9, len(stream)))
    assert [_ids(b) for b in resumed] == [_ids(b) for b in full[9:]]
    # the state saved at the end of an epoch resumes at the start of the next one
    loader.load_state_dict({"epoch": 0, "batches_done": len(stream), "world_size": 1})
    loader.trained = lambda: DataPosition(1, 0)
    assert int(next(iter(loader))["batch_index"]) == 0 and loader.position == DataPosition(1, 0)


def test_shards_by_folder_brace_pattern_and_pipe(glyph_shards):
    from pixword_lit.data.shards import read_shard, resolve_shards

    folder = resolve_shards(str(glyph_shards / "val"), None, "mixed", "data.val")
    brace = resolve_shards(str(glyph_shards / "val" / "shard-{000000..000000}.tar"), None, "mixed",
                           "data.val")
    piped = resolve_shards(f"pipe:cat {glyph_shards}/val/shard-000000.tar", 
                           str(glyph_shards / "val" / "index.json"), "mixed", "data.val")
    assert folder.units == brace.units == piped.units == [16]
    assert len(list(read_shard(piped.urls[0]))) == 16  # read through a pipe: command
    with pytest.raises(data_mod.DataError, match="data.val_index"):
        resolve_shards(f"pipe:cat {glyph_shards}/val/shard-000000.tar", None, "mixed", "data.val")


def test_real_workers_start_from_a_fork_server_and_give_the_in_process_batches(parts):
    """Workers are started from a fork server, never forked from a training process that runs
    other threads (a fork can copy a held lock into the worker: the fsdp hang of issue 9), and
    two real worker processes yield exactly the batches of the in-process loader."""
    import multiprocessing

    import torch

    inline = list(PixLoader(ShardStream(parts.train, parts.builder, 4, 3, True), 0))
    loader = PixLoader(ShardStream(parts.train, parts.builder, 4, 3, True), 2)
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert loader.multiprocessing_context.get_start_method() == "forkserver"
    workers = list(loader)
    assert len(workers) == len(inline) > 2
    for a, b in zip(inline, workers):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key]


def test_a_worker_reads_the_stream_without_lightning(parts, tmp_path):
    """What a DataLoader worker does first, unpickle the stream (the fork server preloads
    torch and data/stream.py), imports no Lightning, torchmetrics, scipy or matplotlib: each
    would cost every training process's fork server seconds of CPU (~4 s here for Lightning)."""
    import pickle
    import subprocess
    import sys

    path = tmp_path / "stream.pkl"
    path.write_bytes(pickle.dumps(ShardStream(parts.train, parts.builder, 4, 3, True)))
    code = ("import pickle, sys; import torch, pixword_lit.data.stream; "
            f"s = pickle.loads(open({str(path)!r}, 'rb').read()); next(iter(s)); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'lightning', 'lightning_utilities', 'torchmetrics', 'scipy', 'matplotlib'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]"


_COUNTED_SCRIPT = """
import pickle, sys
with open(sys.argv[1] + ".runs", "a") as f:  # one line each time this script's body runs
    f.write(__name__ + "\\n")
if __name__ == "__main__":
    from pixword_lit.data.stream import PixLoader
    stream = pickle.loads(open(sys.argv[1], "rb").read())
    for _ in range(2):  # two iterators: 4 workers
        assert len(list(PixLoader(stream, 2))) > 0
"""


def test_the_started_script_runs_once_in_the_fork_server_not_in_every_worker(parts, tmp_path):
    """multiprocessing runs the started script again in each worker it starts from a fork
    server (to unpickle what the script defines), unless the server has it: here it runs in
    the training process and once in the server (data/server_main.py), for 4 workers."""
    import pickle
    import subprocess
    import sys

    stream, script = tmp_path / "stream.pkl", tmp_path / "train.py"
    stream.write_bytes(pickle.dumps(ShardStream(parts.train, parts.builder, 4, 3, True)))
    script.write_text(_COUNTED_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(stream)], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "stream.pkl.runs").read_text().split() == ["__main__", "__mp_main__"]


_HOLD_WORKERS = """
import sys, time
from pixword_lit.system.build import build_parts
from pixword_lit.system.config import DEBUG_MODEL, load_config
from pixword_lit.data.stream import PixLoader, ShardStream
cfg = load_config(None, [*DEBUG_MODEL, f"data.train={sys.argv[1]}/train", f"data.val={sys.argv[1]}/val"])
parts = build_parts(cfg, None)
it = iter(PixLoader(ShardStream(parts.train, parts.builder, 4, 3, True), 2))
next(it)
print(" ".join(str(w.pid) for w in it._workers), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_workers_end_when_the_training_process_is_killed(glyph_shards):
    """A fork-server worker is the server's child, so torch's own parent check cannot see the
    training process die; after a SIGKILL of it the workers must still end, not linger."""
    import signal
    import subprocess
    import sys
    import time

    from pixword_lit.data.workers import alive

    proc = subprocess.Popen([sys.executable, "-c", _HOLD_WORKERS, str(glyph_shards)],
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids), "DataLoader workers outlived a killed trainer"
