"""LightningModule: the model and its loss (split into word and pix parts), the validation
sums (torchmetrics), AdamW + cosine schedule, the color-frequency baseline and the run's
counters (`tokens_seen`, `pix_tokens_seen`, `color_counts`, kept in checkpoints).
The model itself (`PixWordModel`) knows nothing of Lightning; what a fit writes to its run
folder (logs, metrics, pictures) and the throughput it measures are callbacks (callbacks.py).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from omegaconf import OmegaConf
from torchmetrics import SumMetric

from pixword_lit.model.components.folding import folding_from_state, psnr
from pixword_lit.model.pixword import LossTerms, PixWordModel, loss_terms
from pixword_lit.model.tokens import Vocab
from pixword_lit.provenance import usable_cores
from pixword_lit.system import checkpoints
from pixword_lit.system.parallel import apply_fsdp, is_sharded

# validation sums: the loss terms and the folding error / baseline sums beside them
VAL_SUMS = [*LossTerms._fields, "fold_se", "fold_n", "baseline_sum"]


class PixWordLit(L.LightningModule):
    def __init__(self, config: dict, n_words: int, folding_state: dict, tokenizer: str | None = None):
        super().__init__()
        # config, vocab size, palette and the word tokenizer (JSON text) travel with
        # checkpoints, so a checkpoint alone is enough to generate from (pixword_lit.infer.load)
        self.save_hyperparameters()
        self.cfg = OmegaConf.create(config)
        self.folding = folding_from_state(folding_state)
        self.vocab = Vocab(n_words, self.folding.n_pix)
        self.model = PixWordModel(self.cfg.model, self.vocab, self.folding)
        # nan_strategy "disable": a NaN loss stays NaN (the default drops it and reports 0)
        self.val_sums = torch.nn.ModuleDict({k: SumMetric(nan_strategy="disable") for k in VAL_SUMS})
        # global totals, identical on every rank (increments are summed over ranks each step,
        # so the rank-0 checkpoint holds the whole run's counts): the training set's pix
        # target frequencies (for the baseline that always predicts them), elements trained
        # on (valid decoder inputs) and pix tokens trained on (valid pixels)
        self.register_buffer("color_counts", torch.zeros(self.folding.n_pix, dtype=torch.float64))
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.float64))
        self.register_buffer("pix_tokens_seen", torch.zeros((), dtype=torch.float64))
        # the gradient-accumulation window being trained (see on_before_optimizer_step): its
        # provisional loss denominator (None: no window open) and its scored targets so far
        self._window_denominator: float | None = None
        self._window_scored = 0.0
        self._window_sum = 0.0  # its summed loss so far (for the logged mean)
        self._window_units = torch.zeros((), dtype=torch.float64)  # its units of data so far
        self.last_val: dict = {}  # the latest validation's results (val/*, baseline/*)
        self._last_val_step: int | None = None  # optimizer step of the latest validation

    @classmethod
    def load_trained(cls, ckpt: str | Path) -> PixWordLit:
        """The module of a checkpoint: a .ckpt file, or a sharded fsdp folder (converted aside
        into a temporary single file, not kept); read with weights_only (checkpoints.py)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(ckpt)
            if path.is_dir():
                path = checkpoints.single_file_checkpoint(path, Path(tmp) / "single.ckpt")
            return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)

    # ---- training ---------------------------------------------------------------------
    def forward(self, batch):
        return self.model(batch)

    def training_step(self, batch, batch_idx):
        """The loss is one mean over every scored target of the global batch: all ranks and
        all micro-batches of a gradient-accumulation window (as the authors' single-process
        DataParallel takes it), so a sample weighs by its targets wherever it lands and
        placeholders (no targets) change nothing. See `on_before_optimizer_step`.
        -> the loss to differentiate, and `mean_loss` (the mean over the global batch's
        micro-batches so far, so at its last one the step's global mean, whatever the split of
        the global batch into ranks and micro-batches; callbacks.TrainLog writes it)."""
        t = loss_terms(self.model(batch), batch["targets"], self.vocab.n_words, self.model.dense,
                       self.model.pix_weight)
        pix_t = batch["targets"][batch["targets"] >= self.vocab.n_words] - self.vocab.n_words
        colors = torch.bincount(pix_t, minlength=self.vocab.n_pix)
        # units of the data order this micro-batch read (used or skipped; none for a placeholder)
        units = batch.get("n_units", torch.tensor(batch["targets"].shape[0]))
        seen = torch.stack([batch["elem_valid"].sum(), batch["n_pixels"].sum(), units.to(batch["n_pixels"])])
        inc = torch.cat([colors, seen, t.stack()]).double()
        world, accum = self.trainer.world_size, self.trainer.accumulate_grad_batches
        if world > 1:  # one all-reduce for the counters and the global loss terms
            inc = self.trainer.strategy.reduce(inc, reduce_op="sum")
        colors, seen, g = inc.split([self.vocab.n_pix, 3, len(LossTerms._fields)])
        self.color_counts += colors
        self.tokens_seen += seen[0]
        self.pix_tokens_seen += seen[1]
        # global sums and counts of this micro-batch
        g = LossTerms.unstack(g) if world > 1 else LossTerms(*(v.detach() for v in t))
        n_global = float(g.n)
        if batch_idx % accum == 0 or self._window_denominator is None:  # a window starts
            # (Lightning zeroes grads) provisional denominator: this micro-batch's count times
            # the window length; on_before_optimizer_step rescales to the window's true count
            self._window_denominator, self._window_scored = max(n_global, 1.0) * accum, 0.0
            self._window_sum, self._window_units = 0.0, seen[2] * 0
        self._window_scored += n_global
        self._window_units = self._window_units + seen[2]
        if accum > 1:  # (one process, one micro-batch: no host sync for the logged mean)
            self._window_sum += float(g.sum)
        # Lightning divides by accum and DDP/FSDP average over ranks: both are undone here
        loss = t.sum * (world * accum) / self._window_denominator
        mean = g.sum / g.n.clamp(min=1)  # the global micro-batch's mean, for the logs
        window_mean = mean if accum == 1 else torch.tensor(  # the global batch's, so far
            self._window_sum / max(self._window_scored, 1.0), dtype=torch.float64)
        log = dict(on_step=True, on_epoch=False, batch_size=batch["targets"].shape[0])
        self.log("train/loss", mean, prog_bar=True, **log)
        self.log("train/pix_loss", g.pix_sum / g.pix_n.clamp(min=1), **log)
        if self.cfg.data.mode != "image_only":  # image-only data has no word targets
            self.log("train/word_loss", g.word_sum / g.word_n.clamp(min=1), **log)
        self.log("train/pix_acc", g.pix_correct / g.pix_n.clamp(min=1), **log)
        if int(batch["n_skipped"]):
            self.log("data/skipped", batch["n_skipped"].float(), reduce_fx="sum", **log)
        # units: the global batch's units so far (callbacks.LossPerImages counts images by it)
        return {"loss": loss, "mean_loss": window_mean.detach(), "units": self._window_units}

    def on_before_optimizer_step(self, optimizer):
        # the gradients (unscaled under fp16) hold sum(d ce) / provisional denominator;
        # make it sum(d ce) / (scored targets of the window on all ranks), before clipping
        if self._window_denominator is None:
            return
        factor = self._window_denominator / max(self._window_scored, 1.0)
        self._window_denominator = None
        if factor != 1.0:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.mul_(factor)

    def setup(self, stage):
        if self.device.type == "cpu" and self.trainer.num_devices > 1:
            # CPU processes on one machine share its cores: more threads than cores spin and
            # slow every process down
            torch.set_num_threads(threads_per_process(self.trainer.num_devices))

    def configure_model(self):
        # fsdp (ModelParallelStrategy): shard the finished model, once (fit, then validate)
        if self.device_mesh is not None and not is_sharded(self.model):
            apply_fsdp(self.model, self.device_mesh["data_parallel"])

    def configure_optimizers(self):
        o = self.cfg.optim
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        norm_decay = o.weight_decay if o.get("decay_norms", False) else 0.0  # authors: every param
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay},
             {"params": no_decay, "weight_decay": norm_decay}],
            lr=o.lr, betas=tuple(o.betas), eps=o.eps,
        )
        max_steps = self.cfg.trainer.max_steps
        # max_steps -1: the run is max_epochs long, and so is the cosine
        total = o.decay_steps or (max_steps if max_steps > 0 else self.trainer.estimated_stepping_batches)
        total = max(int(total), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.warmup_steps, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        # rank 0's RNG states (torch, numpy, python; cuda where present): every rank is seeded
        # alike and the model draws no random numbers in training, so they agree across ranks
        states = _collect_rng_states()
        kind, keys, pos, has_gauss, cached = states["numpy"]
        # plain lists, so the checkpoint stays loadable with torch.load(weights_only=True)
        states["numpy"] = [kind, keys.tolist(), pos, has_gauss, cached]
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, checkpoint):
        _upgrade_counters(checkpoint)
        if "rng_states" in checkpoint:
            states = dict(checkpoint["rng_states"])
            kind, keys, pos, has_gauss, cached = states["numpy"]
            states["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
            _set_rng_states(states)

    # ---- validation -------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        """-> the batch's logits (callbacks.Pictures draws the first batch's predictions)."""
        out = self.model(batch, every_pixel=True)
        # every sum is updated on every rank (zeros where a variant has no such term), so all
        # ranks sync the same metric set
        t = loss_terms(out, batch["targets"], self.vocab.n_words, self.model.dense)._asdict()
        t["fold_se"] = batch["fold_se"].sum()
        t["fold_n"] = batch["n_pixels"].sum() * 3
        t["baseline_sum"] = self._baseline_sum(batch["targets"])
        for k, v in t.items():
            self.val_sums[k].update(v.detach().double())
        return {"logits": out.logits}

    def on_validation_epoch_start(self):
        counts = self.color_counts  # already summed over ranks
        # add-one smoothing: a color never seen in training keeps a finite loss
        self._baseline_logp = torch.log((counts + 1) / (counts.sum() + len(counts)))

    def _baseline_sum(self, targets):
        pix = targets[targets >= self.vocab.n_words] - self.vocab.n_words
        return -self._baseline_logp[pix].sum()

    def on_validation_epoch_end(self):
        s = {k: float(m.compute()) for k, m in self.val_sums.items()}
        for m in self.val_sums.values():
            m.reset()
        out = {
            "val/loss": s["sum"] / max(s["n"], 1),
            "val/pix_loss": s["pix_sum"] / max(s["pix_n"], 1),
            "val/word_loss": s["word_sum"] / max(s["word_n"], 1),
            "val/pix_acc": s["pix_correct"] / max(s["pix_n"], 1),
            "val/fold_psnr": psnr(s["fold_se"] / max(s["fold_n"], 1)),
            "baseline/pix_loss": s["baseline_sum"] / max(s["pix_n"], 1),
        }
        if s["pixel_all_n"] > 0:  # every valid pixel predicted (dense; full_causal in evaluation)
            out.update(image_likelihood(s["pixel_all_sum"] / s["pixel_all_n"], self.folding))
        if s["word_n"] == 0 or self.cfg.data.mode == "image_only":
            # image-only data has no words: its only word-class targets are the structural
            # <|image|> <|/image|> </s> (scored in val/loss), so no word loss is reported
            out["val/word_loss"] = float("nan")
        self.last_val = out
        fresh = self.global_step != self._last_val_step  # not the final re-validation
        self._last_val_step = self.global_step
        for k, v in out.items():
            # the final re-validation adds no second curve point; a NaN val/loss is logged
            # (the run diverged, and ModelCheckpoint needs the key)
            if fresh and (math.isfinite(v) or k == "val/loss"):
                self.log(k, v, sync_dist=False)  # already reduced over ranks


def _upgrade_counters(checkpoint: dict) -> None:
    """Single-file checkpoints written before the counters had names held one buffer
    `seen` = [elements, pix tokens, training seconds]: give its parts their names (the
    seconds to callbacks.PixThroughput's state), so such runs still load and resume."""
    sd = checkpoint.get("state_dict", {})
    if "seen" not in sd:
        return
    seen = sd.pop("seen")
    sd["tokens_seen"], sd["pix_tokens_seen"] = seen[0].clone(), seen[1].clone()
    checkpoint.setdefault("callbacks", {}).setdefault("PixThroughput", {"train_seconds": float(seen[2])})


def image_likelihood(nll: float, folding) -> dict:
    """Mean nats per pixel token -> bits per sub-pixel (README "Image likelihood").

    bpd_folded = nats / (3 ln 2): each pixel token holds 3 sub-pixels of the folded image.
    Uniform folding: bpd_8bit = bpd_folded + log2(f), the bits/dim of 8-bit data under uniform
    dequantization inside each bin (an upper bound on the 8-bit likelihood). A palette has
    no per-channel bins: its bpd is on the palette alone, and named so.
    """
    bpd = nll / (3 * math.log(2))
    if getattr(folding, "has_channel_levels", False):
        return {"val/pix_nll_all": nll, "val/bpd_folded": bpd,
                "val/bpd_8bit": bpd + math.log2(folding.factor)}
    return {"val/pix_nll_all": nll, "val/bpd_palette": bpd}


def threads_per_process(processes: int) -> int:
    """Intra-op threads for each of `processes` CPU processes of one run: their share of the
    run's cores, which are OMP_NUM_THREADS where set (a grid launcher's share of the machine)
    or else the cores this process may run on (its affinity: a cgroup, taskset or SLURM)."""
    budget = os.environ.get("OMP_NUM_THREADS", "").strip()
    cores = int(budget) if budget.isdigit() and int(budget) > 0 else usable_cores()
    return max(1, cores // max(processes, 1))


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up to 1, then cosine decay to min_ratio at `total` steps, flat after."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
