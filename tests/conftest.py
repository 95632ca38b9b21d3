"""Shared fixtures: tiny shards built in temporary folders, tiny configs. No network."""

from __future__ import annotations

import collections
import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

# numpy's OpenBLAS threads spin while they wait: on 2 shared cores (2 pytest-xdist workers, the
# tests' own subprocesses) they made the scaling fits' small BLAS calls up to 4x slower (measured:
# test_scaling's known-surface test 44 s with them, 12 s without). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Each pytest-xdist worker gets its share of the cores, as a grid launcher gives each cell
# (grid/launch.py): torch's OpenMP threads read it at start-up here, and every fit, rank and grid
# cell the tests start inherits it. With 2 threads in each of 2 workers and their subprocesses,
# the idle threads spin on cores that others need (measured on 2 cores: the same tests took
# ~20% more CPU and wall time).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from pixword_lit.provenance import usable_cores  # no torch

    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, usable_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest  # noqa: E402

# numpy, PIL, data_prep and pixword_lit (torch) are imported where used: pytest's main process
# loads this file before it starts the workers, and with them at the top it spent ~2.5 s of the
# suite's start importing torch, which it never uses.


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "matrix_runs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)  # real fits (make test-fast leaves them out)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects the same order
        items.sort(key=_file_order(items))


# `make test` runs the suite on pytest-xdist workers, a test file per worker at a time (--dist
# loadfile: a module fixture is made once), handed out in the order below: the longest files
# first (their time in a full run on the project's 2-core machine, longest first), then the
# rest by their number of tests as xdist orders them. Longest first, both workers end within a
# short file of each other; in xdist's own order (most tests first) one worker ran a 2-minute
# file last while the other had finished (measured: 36 s apart, the machine half idle).
LONGEST_FIRST = [
    "tests/test_elastic.py", "tests/test_resume.py",  # one unit: see SAME_WORKER
    "tests/test_launch.py",
    "tests/test_preempt.py",  # after the resume matrix it reads has been started
    "tests/test_bench.py", "tests/test_grid.py", "tests/test_reproduce.py", "tests/test_scaling.py",
    "tests/test_hparams_view.py", "tests/test_dist_uneven.py", "tests/test_slurm_launch.py",
    "tests/test_data.py", "tests/test_fidelity.py", "tests/test_dist.py", "tests/test_fit.py",
    "tests/test_generate_cli.py",
]


def _file_order(items):
    """Sort key: LONGEST_FIRST's files in its order, then the others by their number of tests."""
    counts = collections.Counter(item.nodeid.split("::")[0] for item in items)
    rank = {f: (LONGEST_FIRST.index(f) if f in LONGEST_FIRST else len(LONGEST_FIRST), -n, f)
            for f, n in counts.items()}
    return lambda item: rank[item.nodeid.split("::")[0]]


# One exception to a file per worker: test_elastic and test_resume are one unit on one worker,
# so neither waits while the other worker builds the resume matrix that both read (measured:
# test_elastic waited ~90 s for it on the other worker, its worker idle).
SAME_WORKER = {"tests/test_elastic.py": "tests/test_resume.py"}


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None  # xdist's own
    config.option.loadscopereorder = False  # the workers' collection order: LONGEST_FIRST
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SAME_WORKER.get(scope, scope)

    return Scheduling(config, log)


# The session fixtures below are made once for the whole session, whichever worker asks first:
# in a folder every worker sees, under a lock.
def _shared(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def _made_once(folder: Path):
    """Yields True to the one caller that must make `folder` (the others wait for it), then
    marks it made; a folder left half-made by a crash is made again."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = folder / ".made"
        if done.exists():
            yield False
            return
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        yield True
        done.touch()


@pytest.fixture(scope="session")
def glyph_shards(tmp_path_factory):
    out = _shared(tmp_path_factory) / "glyphs"
    with _made_once(out) as make:
        if make:
            from data_prep.glyphs import build_glyphs

            build_glyphs(out, num_train=96, num_val=16, seed=0)
    return out


# a grid's fixed keys for a run of seconds (tests that launch grids add their step counts)
TINY_GRID = {
    "data.batch_size": 4, "data.num_workers": 0, "data.max_seq_len": 64,
    "model.dim": 32, "model.n_heads": 4, "model.n_kv_heads": 2, "model.image_layers": 1,
    "model.decoder_layers": 1, "model.image_size": 16, "model.window_size": 4,
    "trainer.accelerator": "cpu", "trainer.enable_progress_bar": False,
    "run.ckpt_every_n_steps": None, "run.pictures": 0,
}


def tiny_config(shards, tmp_path, *extra, mode="mixed"):
    from pixword_lit.system.config import DEBUG_MODEL, load_config

    return load_config(None, [
        *DEBUG_MODEL, f"data.train={shards}/train", f"data.val={shards}/val", f"data.mode={mode}",
        "data.batch_size=4", "data.num_workers=0", "data.max_seq_len=64",
        "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        f"run.dir={tmp_path}/run", "optim.lr=3e-3", *extra,
    ])


def worked_example_rgb(rows: int = 4):
    """Spec section 5: pixel (r, c) has pix token (4r + c) % 8 under fold 128 -> (rows, 4, 3)
    uint8 array."""
    import numpy as np

    r, c = np.mgrid[0:rows, 0:4]
    t = (4 * r + c) % 8
    rgb = np.stack([(t & 1) * 128 + 17, ((t >> 1) & 1) * 128 + 3, ((t >> 2) & 1) * 128 + 90], -1)
    return rgb.astype(np.uint8)


@pytest.fixture
def worked_example_shards(tmp_path):
    from PIL import Image

    from data_prep.images import build_images

    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(worked_example_rgb(4)).save(src / "square.png")
    Image.fromarray(worked_example_rgb(2)).save(src / "wide.png")
    out = tmp_path / "shards"
    build_images(src, out, val_fraction=0.0)
    return out


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory):
    """24 training units: 3 batches an epoch at 8 per step (runs cross epoch boundaries)."""
    out = _shared(tmp_path_factory) / "glyphs_small"
    with _made_once(out) as make:
        if make:
            from data_prep.glyphs import build_glyphs

            build_glyphs(out, num_train=24, num_val=8, seed=0)
    return out


# The resume matrix's worlds (resume_matrix.py): ddp's and fsdp's runs share one world of 2
# processes, which runs them in turn (2 processes fewer to start than a world each).
MATRIX_WORLDS = {"single": ("single",), "ddp": ("ddp", "fsdp"), "fsdp": ("ddp", "fsdp")}


@pytest.fixture(scope="session")
def matrix_runs(tmp_path_factory, glyph_shards, small_shards):
    """strategy -> folder of the resume matrix's runs (resume_matrix.py), made once."""
    from resume_matrix import matrix_fits, run_fits

    def get(strategy):
        world = MATRIX_WORLDS[strategy]
        root = _shared(tmp_path_factory) / f"resume-{'-'.join(world)}"
        with _made_once(root) as make:
            if make:
                fits = []
                for s in world:
                    fits += matrix_fits(s, root / s, {"large": glyph_shards, "small": small_shards})
                run_fits(fits, root, "+".join(world))
        return root / strategy

    return get


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a busy 2-core machine: a second intra-op thread makes each small op
    slower (up to ~500x), never faster. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
