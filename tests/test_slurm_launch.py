"""The SLURM launcher without a cluster (issue 12): stand-ins for sbatch / srun / sacct on PATH
record what submitit submits and report job states the test chooses. The job script is then
run as SLURM would run it (its srun line, with the SLURM variables a task sees), so the cells
train for real. Preemption is simulated as `pixword fit` leaves it (a checkpoint at the
signal's step and summary.json `status: preempted`) with sacct saying PREEMPTED."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import QUIET, final, write_grid  # tests/ is on sys.path (no __init__)

from pixword_lit.grid.launch import launcher_of, run_grid
from pixword_lit.grid.spec import load_grid, load_state
from pixword_lit.grid.status import status_table

FAKES = {
    "sbatch": """#!/bin/sh
n=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 7001)
cp "$1" "$FAKE_SLURM/job_$n.sh"
echo $((n + 1)) > "$FAKE_SLURM/next"
echo "Submitted batch job $n"
""",
    "srun": "#!/bin/sh\nexit 0\n",
    "sacct": """#!/bin/sh
echo "JobID|State|NodeList"
cat "$FAKE_SLURM/sacct.txt" 2>/dev/null
exit 0
""",
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "fake_slurm"
    (d / "bin").mkdir(parents=True)
    for name, text in FAKES.items():
        (d / "bin" / name).write_text(text)
        (d / "bin" / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{d / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(d))
    return d


def submitted_cell(root: Path, job_id: str):
    """The function submitit pickled for the job (what every task of it will run)."""
    with open(root / ".submitit" / job_id / f"{job_id}_submitted.pkl", "rb") as f:
        return pickle.load(f).function


def run_job(fake: Path, job_id: str, restarts: int = 0) -> None:
    """Run a submitted job script's srun line as one SLURM task of job `job_id` would."""
    script = (fake / f"job_{job_id}.sh").read_text().splitlines()
    srun = shlex.split(next(line for line in script if line.startswith("srun ")))
    python = srun.index(sys.executable)
    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": job_id, "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_JOB_NAME": "pixword", "SLURM_RESTART_COUNT": str(restarts)}
    subprocess.run(srun[python:], env=env, check=True, capture_output=True)


def test_job_script_carries_resources_signal_requeue_and_one_task_per_gpu(fake_slurm, tmp_path,
                                                                           glyph_shards):
    path = write_grid(tmp_path / "g.yaml", glyph_shards, "  optim:\n    - {lr: 0.003, label: ok}\n")
    path.write_text(path.read_text().replace("threads: 1\n", "")
                    + "launcher: {name: slurm, nodes: 2, gpus_per_node: 4, cpus_per_task: 8, "
                    "time: '1:30:00', partition: gpu, account: proj, signal: USR1@120, "
                    "setup: [source .venv/bin/activate], sbatch: {qos: high}}\n")
    grid = load_grid(path)
    root = tmp_path / "root"
    assert run_grid(grid, root, launcher_of(grid), allow_dirty=True, **QUIET) == {"submitted": 1}
    script = (fake_slurm / "job_7001.sh").read_text()
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8",
                 "--time=90", "--partition=gpu", "--account=proj", "--signal=USR1@120",
                 "--requeue", "--qos=high"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert "USR2" not in script  # submitit's own signal (and requeue) is not asked for
    assert "\nsource .venv/bin/activate\n" in script
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    rec = load_state(root)["runs"][grid.runs()[0].name]
    assert (rec["status"], rec["job_id"], rec["launcher"]) == ("submitted", "7001", "slurm")
    cell = submitted_cell(root, "7001")
    assert cell.args[-2:] == ["trainer.devices=4", "trainer.num_nodes=2"]  # Lightning's ranks = tasks
    assert cell.threads == 8 and cell.resume is False


@pytest.mark.slow
def test_preempted_cell_is_resubmitted_and_resumes(fake_slurm, tmp_path, glyph_shards, capsys):
    path = write_grid(tmp_path / "g.yaml", glyph_shards, "  optim:\n    - {lr: 0.003, label: ok}\n")
    path.write_text(path.read_text() + "launcher: {name: slurm}\n")
    grid = load_grid(path)
    name = grid.runs()[0].name
    root, sacct = tmp_path / "root", fake_slurm / "sacct.txt"

    def status() -> str:
        status_table(grid, root)
        return load_state(root)["runs"][name]["status"]

    assert run_grid(grid, root, launcher_of(grid), allow_dirty=True, **QUIET) == {"submitted": 1}
    assert status() == "submitted"  # sacct does not know the job yet
    sacct.write_text("7001|RUNNING|node1\n")
    assert status() == "running"
    assert run_grid(grid, root, launcher_of(grid), allow_dirty=True, **QUIET) == {"in flight": 1}
    run_job(fake_slurm, "7001")
    whole = final(root, name)  # the uninterrupted run, for the comparison below
    assert whole["status"] == "finished" and whole["steps"] == 4

    # preempted at step 2, as `pixword fit` leaves it; the job ended without a requeue
    for ckpt in (root / name / "checkpoints").iterdir():
        if ckpt.name != "step0000002.ckpt":
            ckpt.unlink()
    (root / name / "summary.json").write_text(json.dumps({"status": "preempted", "steps": 2}))
    sacct.write_text("7001|PREEMPTED|node1\n")
    assert status() == "preempted"
    assert "preempted" in capsys.readouterr().out
    # a requeued job (same id, SLURM_RESTART_COUNT > 0) would resume by itself
    first = submitted_cell(root, "7001")
    assert first.resume_now({"SLURM_RESTART_COUNT": "1"}) and not first.resume_now({})

    # the next launch resubmits it with --resume last
    assert run_grid(grid, root, launcher_of(grid), allow_dirty=True, **QUIET) == {"submitted": 1}
    assert submitted_cell(root, "7002").resume is True
    sacct.write_text("7001|PREEMPTED|node1\n7002|RUNNING|node2\n")
    assert status() == "resumed"
    run_job(fake_slurm, "7002")
    sacct.write_text("7001|PREEMPTED|node1\n7002|COMPLETED|node2\n")
    assert status() == "finished"
    resumed = final(root, name)
    # --status shows the wall time of a SLURM run: the run's own clock, kept in the record
    assert load_state(root)["runs"][name]["wall_s"] == resumed["wall_s"] > 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(name)][-1]
    assert f"{resumed['wall_s']}" in row.split()
    assert resumed["resumed_from"][-1].endswith("step0000002.ckpt") and resumed["steps"] == 4
    for key in ("val/loss", "param_checksum", "tokens_seen"):
        assert resumed[key] == whole[key], key
    log = (root / "logs" / f"{name}.log").read_text()
    assert log.count("== ") == 2 and "7002 rank 0" in log and "--resume last" in log
