"""Launchers (issue 12): the local launcher through submitit, N cells at a time, with the grid's
failure paths (crash, non-finite loss), skip-finished and re-run on a changed command; Ctrl-C
on the launcher; the lock; the clean-commit rule. The SLURM path is in test_slurm_launch.py.

The grids launch from this checkout, which may have uncommitted changes while developing, so
they pass allow_dirty; the refusal itself is tested on a throw-away git repository."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixword_lit import provenance
from pixword_lit.cli import main
from pixword_lit.grid import launch
from pixword_lit.grid.compare import collect
from pixword_lit.grid.launch import Launcher, launcher_of, run_grid
from pixword_lit.grid.spec import cell_args, load_grid, load_state, run_status
from pixword_lit.grid.status import GridLock
from pixword_lit.system.config import REPO_ROOT, ConfigError

QUICKSTART = REPO_ROOT / "experiments" / "quickstart.yaml"
QUIET = {"echo": lambda *a: None}


def tiny_fixed(shards, **extra) -> str:
    tiny = {
        "data.train": f"{shards}/train", "data.val": f"{shards}/val",
        "data.batch_size": 4, "data.num_workers": 0, "data.max_seq_len": 64,
        "model.dim": 32, "model.n_heads": 4, "model.n_kv_heads": 2, "model.image_layers": 1,
        "model.decoder_layers": 1, "model.image_size": 16, "model.window_size": 4,
        "model.folding.factor": 64, "trainer.max_steps": 4, "trainer.val_check_interval": 2,
        "trainer.accelerator": "cpu", "trainer.enable_progress_bar": False,
        "run.ckpt_every_n_steps": 2, "run.pictures": 0, **extra,
    }
    return "\n".join(f"  {k}: {json.dumps(v)}" for k, v in tiny.items())


def write_grid(path: Path, shards, axes: str, **extra) -> Path:
    path.write_text(f"base: {QUICKSTART}\nfixed:\n{tiny_fixed(shards, **extra)}\naxes:\n{axes}\n"
                    "seeds: [0]\nthreads: 1\n")
    return path


OPTIM_AXIS = """  optim:
    - {lr: 0.003, label: ok}
    - {lr: 0.003, betas: [0.9, 2.0], label: crash}   # AdamW refuses it inside fit: a crash
    - {lr: .inf, label: nan}                         # diverges: val/loss NaN
"""


def final(root: Path, name: str) -> dict:
    return json.loads((root / name / "summary.json").read_text())


@pytest.mark.slow
def test_local_parallel_failure_paths_skip_and_same_numbers_as_sequential(glyph_shards, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # submitit's local jobs would see ""
    grid = load_grid(write_grid(tmp_path / "g.yaml", glyph_shards, OPTIM_AXIS))
    ok, crash, nan = grid.runs()
    root = tmp_path / "par"
    spec = Launcher(parallel=2, poll_s=0.2)
    assert run_grid(grid, root, spec, allow_dirty=True, **QUIET) == {"finished": 1, "failed": 2}
    state = load_state(root)
    recs = state["runs"]
    assert [recs[r.name]["status"] for r in (ok, crash, nan)] == ["finished", "failed", "failed"]
    assert recs[crash.name]["error"].startswith("exit code 1")
    assert "Invalid beta parameter" in recs[crash.name]["error"]  # the log's tail
    assert recs[nan.name]["error"].startswith("non-finite val/loss (nan)")
    assert math.isnan(final(root, nan.name)["val/loss"])
    # the record: relative paths, the axes of each run, the commit launched from
    assert recs[ok.name]["dir"] == ok.name and recs[ok.name]["log"] == f"logs/{ok.name}.log"
    assert state["axes"][ok.name] == {"optim": {"lr": 0.003, "label": "ok"}}
    git = ["git", "-C", str(REPO_ROOT)]  # the checkout's HEAD, asked of git itself
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    assert state["commit"] == head + ("-dirty" if dirty else "") and len(head) == 40
    recorded = {**state, "runs": {n: {k: v for k, v in r.items() if k != "error"} for n, r in recs.items()}}
    assert str(root) not in json.dumps(recorded)  # nothing tied to where the root is
    moved = tmp_path / "elsewhere" / "par"  # e.g. runs gathered from another machine
    shutil.copytree(root, moved)
    col = collect([str(moved)])
    assert [(r.name, r.error is None, r.axes["optim"]["label"]) for r in col.runs] == [
        (ok.name, True, "ok"), (crash.name, False, "crash"), (nan.name, False, "nan")]
    assert col.runs[0].summary["val/loss"] == final(root, ok.name)["val/loss"]

    # second launch: the finished run is skipped (untouched), the failed ones run again
    mtime = (root / ok.name / "summary.json").stat().st_mtime
    assert run_grid(grid, root, spec, allow_dirty=True, **QUIET) == {"skipped": 1, "failed": 2}
    assert (root / ok.name / "summary.json").stat().st_mtime == mtime
    assert (root / "logs" / f"{crash.name}.log").read_text().count("== ") == 2  # both attempts
    assert "\nOMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=7 " in (
        root / "logs" / f"{ok.name}.log").read_text()

    # the same run alone, sequentially: the same numbers (same seed, same threads)
    one = load_grid(write_grid(tmp_path / "one.yaml", glyph_shards,
                               "  optim:\n    - {lr: 0.003, label: ok}\n"))
    seq = tmp_path / "seq"
    assert run_grid(one, seq, Launcher(parallel=1, poll_s=0.2), allow_dirty=True, **QUIET) == {"finished": 1}
    for key in ("val/loss", "val/pix_loss", "param_checksum", "steps", "tokens_seen"):
        assert final(seq, ok.name)[key] == final(root, ok.name)[key], key

    # a changed command runs again: the finished run is recorded as changed, then re-made
    changed = load_grid(write_grid(tmp_path / "one.yaml", glyph_shards,
                                   "  optim:\n    - {lr: 0.003, label: ok}\n", **{"trainer.max_steps": 2}))
    assert run_status(changed, changed.runs()[0], seq, load_state(seq)) == "changed"
    assert run_grid(changed, seq, Launcher(poll_s=0.2), allow_dirty=True, **QUIET) == {"finished": 1}
    assert final(seq, ok.name)["steps"] == 2


def test_lock_refuses_a_second_launch(glyph_shards, tmp_path, capsys):
    path = write_grid(tmp_path / "g.yaml", glyph_shards, "  optim:\n    - {lr: 0.003, label: ok}\n")
    root = tmp_path / "root"
    with GridLock(root):
        with pytest.raises(ConfigError, match="being launched by pid .* two at once would run cells twice"):
            run_grid(load_grid(path), root, allow_dirty=True, **QUIET)
        assert main(["grid", str(path), "--root", str(root), "--allow-dirty"]) == 2
    assert "being launched by" in capsys.readouterr().err
    assert not (root / "grid_state.json").exists()


def test_dirty_checkout_is_refused_unless_allowed(tmp_path, monkeypatch, glyph_shards, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f.txt").write_text("a\n")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    monkeypatch.setattr(provenance, "SOURCE_ROOT", repo)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance.require_clean(False) == sha
    (repo / "f.txt").write_text("b\n")
    with pytest.raises(ConfigError, match="uncommitted changes"):
        provenance.require_clean(False)
    assert provenance.require_clean(True) == f"{sha}-dirty"
    path = write_grid(tmp_path / "g.yaml", glyph_shards, "  optim:\n    - {lr: 0.003, label: ok}\n")
    assert main(["grid", str(path), "--root", str(tmp_path / "root")]) == 2
    assert "--allow-dirty" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()  # nothing written


def test_launcher_section_and_its_errors(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(f"base: {QUICKSTART}\nlauncher: {{name: slurm, gpus_per_node: 4, time: '1-02:30:00'}}\n")
    spec = launcher_of(load_grid(path), nodes=2)
    assert (spec.name, spec.gpus_per_node, spec.nodes, spec.time) == ("slurm", 4, 2, 1590)
    assert launch.launcher_args(spec) == ["trainer.devices=4", "trainer.num_nodes=2"]
    with pytest.raises(ConfigError, match="unknown key 'gpus'"):
        launcher_of(load_grid(path), gpus=4)
    with pytest.raises(ConfigError, match="signal: 'USR9@x'"):
        launcher_of(load_grid(path), signal="USR9@x")
    with pytest.raises(ConfigError, match="parallel: must be at least 1"):
        launcher_of(load_grid(path), name="local", parallel=0)


def fit_processes(marker: str) -> list[int]:
    """pids of live processes whose command line names the marker (the grid root)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                status = (d / "status").read_text()
            except OSError:
                continue
            if marker in cmd and "pixword_lit.cli fit" in cmd and "State:\tZ" not in status:
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="reads live processes from /proc")
def test_ctrl_c_leaves_cells_interrupted_and_the_next_launch_resumes_them(glyph_shards, tmp_path):
    axes = "  optim:\n    - {lr: 0.003, label: a}\n    - {lr: 0.002, label: b}\n"
    steps = 40
    path = write_grid(tmp_path / "g.yaml", glyph_shards, axes, **{"trainer.max_steps": steps,
                                                                  "trainer.val_check_interval": 20,
                                                                  "run.ckpt_every_n_steps": 5})
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "pixword_lit.cli", "grid", str(path), "--root", str(root),
           "--parallel", "2", "--allow-dirty", "--launcher-opt", "poll_s=0.2"]
    # SIGINT as a terminal delivers it. A pytest started in the background by a non-interactive
    # shell (`make test &`, `nohup`, CI wrappers) inherits SIGINT *ignored* (POSIX: asynchronous
    # commands without job control ignore SIGINT and SIGQUIT; nothing in the suite sets it:
    # checked with a per-test hook over a full run), an ignored SIGINT survives exec, and a
    # Python started with it ignored never raises KeyboardInterrupt: so reset it in the child.
    # A session of its own: Ctrl-C reaches every process of it, as a terminal's does.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    names = [r.name for r in load_grid(path).runs()]
    # each fit is paused (SIGSTOP) as soon as it has a checkpoint, so both are mid-training when
    # Ctrl-C comes, however fast or loaded the machine; they go on (SIGCONT) once it is sent
    paused: dict[str, list[int]] = {}
    deadline = time.time() + 240
    while len(paused) < len(names):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        for n in names:
            if n not in paused and (root / n / "checkpoints" / "step0000005.ckpt").exists():
                paused[n] = fit_processes(str(root / n) + " ")
                for pid in paused[n]:
                    os.kill(pid, signal.SIGSTOP)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # the launcher, submitit's controllers, cells, fits
    for pid in sum(paused.values(), []):
        os.kill(pid, signal.SIGCONT)
    try:
        out = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:  # say what hung, then clean up
        tree = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,args", "-g", str(proc.pid)],
                              capture_output=True, text=True).stdout
        os.killpg(proc.pid, signal.SIGKILL)
        logs = "".join(f"\n== {f}\n{f.read_text()[-2000:]}" for f in sorted(root.rglob("*.log")))
        pytest.fail(f"the launch did not end within 120 s of Ctrl-C\n{proc.communicate()[0]}"
                    f"\nprocesses:\n{tree}{logs}")
    assert proc.returncode == 130, out
    # what was interrupted and how to go on, and nothing else: no traceback of any process
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert f"continue with: pixword grid {path} --root {root}" in out.splitlines()[-1]
    # no cell trains on unrecorded: each fit dies with its cell (PR_SET_PDEATHSIG); a loaded
    # machine may take a moment to tear a killed process down
    gone = time.time() + 10
    while fit_processes(str(root)) and time.time() < gone:
        time.sleep(0.2)
    assert fit_processes(str(root)) == []
    recs = load_state(root)["runs"]
    stopped = [n for n in names if recs[n]["status"] == "interrupted"]
    assert stopped and all(recs[n]["status"] == "finished" for n in names if n not in stopped), out
    for n in stopped:  # never half-recorded: an interrupted run has no finished summary
        assert not (root / n / "summary.json").exists()

    # the next launch resumes the interrupted runs from their newest checkpoint
    grid = load_grid(path)
    counts = run_grid(grid, root, Launcher(parallel=2, poll_s=0.2), allow_dirty=True, **QUIET)
    assert counts == {"finished": len(stopped), **({"skipped": 1} if len(stopped) == 1 else {})}
    for n in stopped:
        assert load_state(root)["runs"][n]["resume"] is True
        assert final(root, n)["resumed_from"] and final(root, n)["steps"] == steps


def test_a_cell_job_runs_fit_without_loading_torch(tmp_path):
    """A cell's job process (submitit's _submit.py: unpickle the Cell, call it) only starts
    `pixword fit` as a child: it loads no torch, which cost every cell ~2 s of start-up."""
    from submitit.core.utils import cloudpickle_dump  # how submitit writes the job

    from pixword_lit.grid.cell import Cell

    job = tmp_path / "job.pkl"
    cloudpickle_dump(Cell(name="r", root=str(tmp_path), cwd=str(tmp_path), args=["--help"],
                          threads=1), job)
    code = (f"import pickle, sys; out = pickle.loads(open({str(job)!r}, 'rb').read())(); "
            "print(out['returncode'], sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'numpy', 'lightning', 'omegaconf'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "0 []"  # fit ran (its --help) and the job loaded none of them
    log = (tmp_path / "logs" / "r.log").read_text()
    assert "OMP_NUM_THREADS=1" in log and "usage: pixword fit" in log


def test_a_preempted_summary_counts_only_for_the_attempt_that_wrote_it(tmp_path):
    from pixword_lit.grid.status import record_end

    (tmp_path / "r").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "r.log").write_text("Traceback ...\nRuntimeError: boom\n")
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"status": "preempted", "steps": 2}))
    written = (tmp_path / "r" / "summary.json").stat().st_mtime
    rec = {"log": "logs/r.log", "launched_at": written - 1}
    record_end(tmp_path, "r", rec, 3, **QUIET)
    assert rec["status"] == "preempted"  # written by this attempt: resume it next time
    rec = {"log": "logs/r.log", "launched_at": written + 1}  # the resumed attempt crashed
    record_end(tmp_path, "r", rec, 1, **QUIET)
    assert rec["status"] == "failed" and rec["error"].endswith("RuntimeError: boom")


def test_records_from_before_launchers_are_read(tmp_path):
    """A grid_state.json written by the sequential runner (a `command`, no `args`) keeps its
    runs' status, and a different command still reads as changed."""
    grid = load_grid("attention")
    run = grid.runs()[0]
    args = cell_args(grid, run)
    old = [sys.executable, "-m", "pixword_lit.cli", "fit", *args[:-2],
           f"run.dir={tmp_path / run.name}", *args[-2:], "--overwrite"]
    state = {"runs": {run.name: {"command": old, "status": "failed"}}}
    assert run_status(grid, run, tmp_path, state) == "failed"
    old[5] = "trainer.max_steps=1"
    assert run_status(grid, run, tmp_path, {"runs": {run.name: {"command": old}}}) == "changed"
