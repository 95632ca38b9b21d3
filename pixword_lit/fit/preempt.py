"""How a fit stops and what it leaves: checkpoints that resume exactly, preemption, run totals.

Every checkpoint pixword writes is taken at one of two points of Lightning's loops: right
after an optimizer step (`on_train_batch_end`: periodic, end-of-fit, preemption) or right
after a validation (`on_validation_end`: best.ckpt and its last.ckpt). Lightning's other save
points are switched off (`StepCheckpoint`): when a fit stops at `max_steps` in the middle of
an epoch, Lightning's fit loop counts that epoch as finished before `on_train_epoch_end` and
`on_train_end` run, so a checkpoint written there resumes in the next epoch.

Preemption: the signals in `run.preempt_signals` (default SIGUSR1, SIGTERM) only set a flag.
After each optimizer step the ranks agree on it (any rank signalled -> all stop); then a
checkpoint is written into checkpoints/ through pixword's atomic writer (sharded under
fsdp), and `Preempted` ends the fit; `train.fit` records it in summary.json, requeues the
SLURM job and the process exits with PREEMPTED_EXIT. Lightning's own signal handling (its
SIGTERM handler and SLURM auto-requeue, which saved `hpc_ckpt_*.ckpt` outside checkpoints/
and kept training) is replaced by this.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped early on a signal, resumable with --resume last


class Preempted(Exception):
    """Raised on every rank at the step a preemption signal was agreed on."""

    def __init__(self, step: int, checkpoint: Path, signame: str | None):
        by = signame or "a signal to another rank"
        super().__init__(f"preempted by {by} at step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint, self.signame = step, checkpoint, signame


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that saves only after a step or a validation (see the module docstring):
    pass save_on_train_epoch_end=False; the end-of-fit last.ckpt is RunControl's."""

    def on_train_end(self, trainer, pl_module) -> None:
        pass


class NoSignals(_SignalConnector):
    """Lightning's signal connector without its handlers (pixword's RunControl owns signals)."""

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False

    def teardown(self) -> None:
        pass


def disable_lightning_signals(trainer) -> None:
    trainer._signal_connector = NoSignals(trainer)  # the one private hook: see NoSignals


class RunControl(Callback):
    """Final checkpoint, preemption and the totals of a run that was resumed (a stateful
    callback: its state travels in checkpoints)."""

    def __init__(self, ckpt_dir: Path, signals: list[str], every_n_steps: int | None,
                 resumed_from: str | None):
        self.ckpt_dir, self.every_n_steps = Path(ckpt_dir), every_n_steps
        self.signals = [signal.Signals[s] for s in signals]
        self.resumed_from = [str(resumed_from)] if resumed_from else []
        self.resume_changes: list[dict] = []  # --resume-anyway's changes (system/resume.py)
        self.wall_before = 0.0  # wall seconds of earlier invocations, up to their checkpoint
        self.start = time.perf_counter()
        self.received: str | None = None
        self._old: dict = {}
        self._checked_step: int | None = None

    # ---- signals ----------------------------------------------------------------------
    def install(self) -> None:
        for sig in self.signals:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals cannot be caught here
                return

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            os.write(2, f"pixword: {name} received: stopping after the current optimizer step "
                        "with a checkpoint\n".encode())

    # ---- hooks ------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._checked_step:  # accumulating gradients: not a step boundary
            return
        self._checked_step = step
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank takes part, so all decide alike
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            path = self.ckpt_dir / "last.ckpt"
            trainer.save_checkpoint(path)
            raise Preempted(step, path, self.received)
        if self._is_final(trainer) and not (self.every_n_steps and step % self.every_n_steps == 0):
            trainer.save_checkpoint(self.ckpt_dir / "last.ckpt")  # (a periodic one saves it else)

    @staticmethod
    def _is_final(trainer) -> bool:
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            if trainer.global_step >= trainer.max_steps:
                return True
        epochs = trainer.max_epochs
        loop = trainer.fit_loop.epoch_loop
        return bool(epochs and epochs > 0 and loop.batch_progress.is_last_batch
                    and trainer.current_epoch + 1 >= epochs)

    # ---- state ------------------------------------------------------------------------
    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.start

    def state_dict(self) -> dict:
        return {"wall_s": self.wall_s(), "resumed_from": list(self.resumed_from),
                "resume_changes": list(self.resume_changes)}

    def load_state_dict(self, state: dict) -> None:
        self.wall_before = float(state.get("wall_s", 0.0))
        self.resumed_from = [*state.get("resumed_from", []), *self.resumed_from[-1:]]
        self.resume_changes = [*state.get("resume_changes", []), *self.resume_changes]


def requeue_slurm_job() -> str | None:
    """`scontrol requeue JOB` when running under SLURM; returns what happened (for the log)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not re.fullmatch(r"[0-9_]+", job):
        return f"not requeued: SLURM job id {job!r} is not a job number"
    try:
        res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`scontrol requeue {job}` failed: {e}"
    if res.returncode != 0:
        return f"`scontrol requeue {job}` failed ({res.returncode}): {res.stderr.strip()}"
    return f"requeued SLURM job {job}"
