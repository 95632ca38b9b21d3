"""What a fit writes and measures besides the model: Lightning callbacks given the run folder.

- `TrainLog`: RUN/train_log.jsonl, the global mean training loss per logged step (rank 0);
- `ValidationLog`: RUN/metrics.jsonl, one record per validation (rank 0);
- `Pictures`: RUN/pictures/, the validation prediction (and, dense, completion) pictures;
- `PixThroughput`: `train/pix_tokens_per_s` and the run's training seconds (checkpointed);
- `LossPerImages`: `train/loss_per_1000_images`, the mean training loss over each block of
  1,000 training units, the curve the authors log (checkpointed);
- `PixFlopsMonitor`: Lightning's ThroughputMonitor, with the FLOPs of a training batch
  counted once (torch's FlopCounterMode), so it logs MFU where the device's peak is known.

The LightningModule (`lit_module.PixWordLit`) holds the model, the loss and the run's
counters; these read them and never change what is trained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback, ThroughputMonitor
from PIL import Image

from pixword_lit.fit.flops import batch_step_flops
from pixword_lit.fit.pictures import completion_picture, prediction_picture
from pixword_lit.system.parallel import is_sharded


class TrainLog(Callback):
    """train_log.jsonl: {step, epoch, batch, loss} every `every_n_steps` optimizer steps, the
    loss being the mean over the step's global batch (all ranks and micro-batches) and batch
    the global batch's index in its epoch, for comparing runs (of any world size)."""

    def __init__(self, run_dir: Path, every_n_steps: int):
        self.path, self.every_n_steps = Path(run_dir) / "train_log.jsonl", every_n_steps
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step + 1  # the optimizer step this batch completes

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank != 0 or self._step % self.every_n_steps:
            return
        if trainer.global_step != self._step:  # not the global batch's last micro-batch
            return
        rec = {"step": self._step, "epoch": int(trainer.current_epoch),
               "batch": int(batch["batch_index"]) // trainer.accumulate_grad_batches,
               "loss": float(outputs["mean_loss"])}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


class LossPerImages(Callback):
    """`train/loss_per_{N}_images` (N = run.loss_block_images, 1000: the authors' split of
    1,000 files) and RUN/loss_per_{N}_images.jsonl: the mean training loss over each
    consecutive block of N units of the data order (images in image_only mode, packed samples
    in mixed), counted over the global batch (all ranks and micro-batches; a skipped unit
    counts, a placeholder does not). Each unit carries its optimizer step's global mean loss,
    so with N a multiple of the global batch a block's value is the mean of its steps' losses,
    as the authors' `train_epoch` averages `loss.item()` over a split; a step across a block's
    end shares its units between the two. Logged to every logger with the block's index
    (0, 1, ...) as its step, the authors' x-axis (`writer.add_scalar("loss", loss, split)`);
    a last block of fewer than N units is not logged. The counters travel in checkpoints, so
    a resumed run continues its block."""

    def __init__(self, run_dir: Path, block: int = 1000):
        self.block, self.tag = int(block), f"train/loss_per_{int(block)}_images"
        self.path = Path(run_dir) / f"loss_per_{int(block)}_images.jsonl"
        self.units = 0.0  # units of the open block so far
        self.loss_sum = 0.0  # their summed step losses
        self.blocks = 0  # blocks logged
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step + 1  # the optimizer step this batch completes

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self._step or "units" not in outputs:
            return  # not the global batch's last micro-batch
        units, loss = float(outputs["units"]), float(outputs["mean_loss"])
        while units > 0:
            take = min(units, self.block - self.units)
            self.units, self.loss_sum, units = self.units + take, self.loss_sum + take * loss, units - take
            if self.units >= self.block:
                self._emit(trainer, self.loss_sum / self.units)
                self.units = self.loss_sum = 0.0

    def _emit(self, trainer, mean: float) -> None:
        block, self.blocks = self.blocks, self.blocks + 1
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:
            logger.log_metrics({self.tag: mean}, step=block)
        rec = {"block": block, "images": (block + 1) * self.block, "step": int(trainer.global_step),
               "loss": mean}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def state_dict(self) -> dict:
        return {"block": self.block, "units": self.units, "loss_sum": self.loss_sum, "blocks": self.blocks}

    def load_state_dict(self, state_dict: dict) -> None:
        if int(state_dict.get("block", -1)) != self.block:  # another block size: start afresh
            return
        self.units, self.loss_sum = float(state_dict["units"]), float(state_dict["loss_sum"])
        self.blocks = int(state_dict["blocks"])


class ValidationLog(Callback):
    """metrics.jsonl: the module's validation results (`last_val`), once per optimizer step
    (the final re-validation after fit adds no second record), sanity checks left out."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._last_step: int | None = None

    def on_validation_end(self, trainer, pl_module):
        step = int(trainer.global_step)
        if trainer.sanity_checking or step == self._last_step:
            return
        self._last_step = step
        if trainer.global_rank == 0:
            rec = {"step": step, "epoch": int(trainer.current_epoch), **pl_module.last_val}
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


class Pictures(Callback):
    """RUN/pictures/val_step*.png, val_latest.png (and completion_*.png for dense models):
    the first validation batch of rank 0, also to TensorBoard."""

    def __init__(self, run_dir: Path, n_images: int, seed: int):
        self.out, self.n, self.seed = Path(run_dir) / "pictures", n_images, seed

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or trainer.global_rank != 0 or self.n <= 0 or trainer.sanity_checking:
            return
        m, step = pl_module.model, trainer.global_step
        img = prediction_picture(batch, outputs["logits"], m.vocab, pl_module.folding, m.cfg, self.n)
        if img is None:
            return
        self._save(trainer, img, "val", "val/prediction", step)
        if m.dense and not is_sharded(m):  # dense: complete the bottom half
            was_training = m.training
            comp = completion_picture(batch, m, m.vocab, pl_module.folding, m.cfg, min(self.n, 2),
                                      seed=self.seed)
            m.train(was_training)
            if comp is not None:
                self._save(trainer, comp, "completion", "val/completion", step)

    def _save(self, trainer, img: np.ndarray, stem: str, tag: str, step: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(self.out / f"{stem}_step{step:07d}.png")
        Image.fromarray(img).save(self.out / f"{stem}_latest.png")
        exp = getattr(trainer.logger, "experiment", None)
        if exp is not None and hasattr(exp, "add_image"):
            exp.add_image(tag, np.transpose(img, (2, 0, 1)), step)


class PixThroughput(Callback):
    """`train/pix_tokens_per_s`: pix tokens of all ranks (the module's `pix_tokens_seen`) over
    the wall time between training batch starts (data loading included, validation not),
    every log_every_n_steps; and `train_seconds`, the run's total of that time on rank 0,
    kept in checkpoints so a resumed run's summary covers the whole run."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps
        self.train_seconds = 0.0  # the whole run, across resumes
        self._last_start: float | None = None  # perf_counter at the previous batch start
        self._window_seconds = 0.0  # since the last logged rate
        self._window_tokens_from = 0.0  # pix_tokens_seen when the window began

    def on_train_start(self, trainer, pl_module):
        self._window_tokens_from = float(pl_module.pix_tokens_seen)
        self._window_seconds, self._last_start = 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self._last_start is not None:
            self._window_seconds += now - self._last_start
            self.train_seconds += now - self._last_start
        self._last_start = now
        if self._window_seconds > 0 and trainer.global_step % self.every_n_steps == 0:
            tokens = float(pl_module.pix_tokens_seen)
            rate = (tokens - self._window_tokens_from) / self._window_seconds
            pl_module.log("train/pix_tokens_per_s", rate, on_step=True, on_epoch=False)
            self._window_tokens_from, self._window_seconds = tokens, 0.0

    def on_validation_start(self, trainer, pl_module):
        self._last_start = None  # validation time is not training throughput

    def state_dict(self) -> dict:
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_seconds = float(state_dict["train_seconds"])


class PixFlopsMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor (`train/batches_per_sec`, `samples_per_sec`,
    `flops_per_sec`, `mfu` where Lightning knows the device's peak, i.e. GPUs; rolling over a
    window of `trainer.log_every_n_steps` batches, at least 2; rank 0) with the FLOPs of a
    batch: those of one training step (forward, loss, backward) on the first training batch,
    counted on a copy of the model (flops.batch_step_flops, the count `pixword bench` makes).
    A batch's FLOPs vary with its length; this counts the first one's (image-only batches all
    have the same shape). Not measured for a sharded (fsdp) model, whose forward needs every
    rank.

    Pix tokens are not its items (`length_fn`): Lightning requires the item count to grow
    with every batch, and a batch may hold no pixel (text-only documents, placeholders);
    `PixThroughput` reports them."""

    def __init__(self, **kwargs):
        super().__init__(batch_size_fn=lambda b: int(b["targets"].shape[0]), **kwargs)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank != 0 or hasattr(pl_module, "flops_per_batch"):
            return
        flops = None
        if not is_sharded(pl_module.model):  # flops.py: CPU attention counted like CUDA's
            with trainer.precision_plugin.forward_context():  # as trained (autocast)
                flops = float(batch_step_flops(pl_module.model, batch))
        pl_module.flops_per_batch = flops  # where ThroughputMonitor reads it (None: not counted)


def run_callbacks(cfg, run_dir: Path) -> list[L.Callback]:
    """The callbacks of a fit that writes its run folder."""
    every = cfg.trainer.log_every_n_steps
    block = cfg.run.get("loss_block_images", 1000)  # configs saved before it existed
    return [TrainLog(run_dir, every), LossPerImages(run_dir, block), ValidationLog(run_dir),
            Pictures(run_dir, cfg.run.pictures, cfg.run.seed), PixThroughput(every),
            PixFlopsMonitor(window_size=max(2, every))]  # rates over the logging interval
