"""Fixed batches and short Lightning fits on them, for tests/test_fidelity.py and the
2-process worker tests/fidelity_ddp_worker.py (which imports this file from its folder).

Batches are fixed lists, not the loader: with the data order of data.py a 2-process run's
global batch holds other samples than a 1-process run's, so the loss weighting is compared
on the same samples split different ways.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from pixword_lit.data.elements import build_sample, collate, empty_sample, image_windows
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.tokens import N_SPECIAL, Vocab
from pixword_lit.system.config import DEBUG_MODEL, load_config
from pixword_lit.system.lit_module import PixWordLit

FOLD = 64
N_WORDS = 48
MODEL = [*DEBUG_MODEL, f"model.folding.factor={FOLD}", f"model.vocab_size={N_WORDS}"]  # with words


def config(*extra):
    # eps 1e-6: Adam's first steps are ~ lr * sign(grad); a larger eps keeps components that
    # are zero up to rounding from moving by lr in one run and not in the other
    return load_config(None, [*MODEL, "data.mode=mixed", "data.max_seq_len=64", "optim.lr=1e-2",
                              "optim.eps=1e-6", "trainer.max_steps=3", *extra])


def make_module(cfg, seed: int = 0) -> PixWordLit:
    torch.manual_seed(seed)
    return PixWordLit(OmegaConf.to_container(cfg, resolve=True), N_WORDS, {"name": "uniform", "factor": FOLD})


def samples(seed: int, n: int, long: bool) -> list[dict]:
    """`long`: an image and up to 40 words (~60 targets); else 2-4 words (3-5 targets)."""
    rng = np.random.default_rng(seed)
    fold = UniformFolding(FOLD)
    vocab = Vocab(N_WORDS, fold.n_pix)
    out = []
    for _ in range(n):
        n_words = int(rng.integers(20, 41) if long else rng.integers(2, 5))
        words = rng.integers(N_SPECIAL, N_WORDS, size=n_words)
        els = [words]
        if long:
            h = int(rng.integers(6, 17))
            rgb = rng.integers(0, 256, size=(h, 16, 3), dtype=np.uint8)
            els = [words[:10], image_windows(rgb, 16, 4, fold, vocab), words[10:]]
        out.append(build_sample(els, vocab, 64))
    return out


def batch_of(items: list[dict], index: int = 0) -> dict:
    b = collate(items, UniformFolding(FOLD).n_pix, 16)
    b["n_skipped"], b["batch_index"] = torch.tensor(0), torch.tensor(index)
    return b


def placeholders(n: int) -> list[dict]:
    return [empty_sample() for _ in range(n)]


class StepGrads(L.Callback):
    """The gradients each optimizer step used (after rescaling and clipping), and the
    parameters after it."""

    def __init__(self):
        self.grads, self.params = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > len(self.grads):  # this batch completed an optimizer step
            self.grads.append([p.grad.detach().clone() for p in pl_module.parameters()])
            self.params.append(params(pl_module))


class FixedBatches(L.LightningDataModule):
    """Rank r trains on per_rank[r], in order."""

    def __init__(self, per_rank: list[list[dict]]):
        super().__init__()
        self.per_rank = per_rank

    def train_dataloader(self):
        return DataLoader(self.per_rank[self.trainer.global_rank], batch_size=None, shuffle=False)


def train(cfg, per_rank, steps: int, accumulate: int = 1, clip=None, strategy="auto", seed: int = 0,
          max_epochs: int = -1):
    """-> (StepGrads, trainer). One process per entry of per_rank."""
    module = make_module(cfg, seed)
    grads = StepGrads()
    trainer = L.Trainer(
        accelerator="cpu", devices=len(per_rank), strategy=strategy, max_steps=steps, max_epochs=max_epochs,
        accumulate_grad_batches=accumulate, gradient_clip_val=clip, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[grads],
    )
    trainer.fit(module, datamodule=FixedBatches(per_rank))
    return grads, trainer


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def global_halves() -> list[tuple[list[dict], list[dict]]]:
    """Two steps' global batches as (rank 0's half, rank 1's half). Step 1: 3 long samples |
    3 short ones (about 20x fewer targets); step 2: 3 long | one placeholder (what a rank
    yields when every unit of its batch was skipped)."""
    return [(samples(1, 3, True), samples(2, 3, False)), (samples(3, 3, True), placeholders(1))]


def global_batches() -> list[list[dict]]:
    """[step][rank] half batches."""
    return [[batch_of(a, i), batch_of(b, i)] for i, (a, b) in enumerate(global_halves())]


def whole_batches() -> list[dict]:
    """The same global batches, whole, for one process."""
    return [batch_of(a + b, i) for i, (a, b) in enumerate(global_halves())]
