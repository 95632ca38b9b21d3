"""The unified pix-token / word-token model (spec sections 4 and 5), a plain nn.Module.

    pix ids --embedding--> image block (per window) --summaries--+
    word ids --word table------------------------------------------+--> decoder --> head
                                                                       (V + n_pix classes)

Which image block (or none) and which pix embedding are components picked by name
(`pixword_lit.model.components`); the decoder, the word table and the head are shared by all.
The batch's keys, shapes and meaning: `pixword_lit.model.batch.Batch` (built by `elements.collate`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pixword_lit.model.batch import Batch
from pixword_lit.model.components import component_params
from pixword_lit.model.components.attention import ATTENTIONS, FullCausal
from pixword_lit.model.components.embedding import EMBEDDINGS
from pixword_lit.model.components.objective import LocalDecoder
from pixword_lit.model.layers import Block, RMSNorm, Stack, next_valid_index
from pixword_lit.model.tokens import IGNORE, Vocab


class ModelOutput(NamedTuple):
    """What `PixWordModel.forward` returns (a NamedTuple: DDP and FSDP find its tensors).

    - `logits` (B, T, C = V + n_pix): at each of the batch's elements, scoring its target
      (batch["targets"]); every objective and attention variant.
    - `pixel_logits` (B, T', C) and `pixel_targets` (B, T'): full_causal with `every_pixel`, or
      the dense objective without an image block: every decoder token predicts the next valid
      token when it is a pixel (IGNORE elsewhere).
    - `dense_logits` (n, P, n_pix) and `dense_targets` (n, P): the dense objective's local
      decoder (components/objective.py) for each window that is a target, and its pixels
      (IGNORE at pad pixels).
    """

    logits: torch.Tensor
    pixel_logits: torch.Tensor | None = None
    pixel_targets: torch.Tensor | None = None
    dense_logits: torch.Tensor | None = None
    dense_targets: torch.Tensor | None = None


class PixWordModel(nn.Module):
    def __init__(self, mcfg, vocab: Vocab, folding):
        super().__init__()
        self.cfg, self.vocab = mcfg, vocab
        emb_name, _ = component_params("embedding", mcfg.embedding)
        attn_name, _ = component_params("attention", mcfg.attention)
        pixels_per_window = mcfg.window_size**2
        self.word_embed = nn.Embedding(vocab.n_words, mcfg.dim)
        pix_embed = EMBEDDINGS[emb_name](mcfg.dim, folding, pixels_per_window)
        self.pixels = ATTENTIONS[attn_name](mcfg, pix_embed, vocab)  # embedding + image block
        self.decoder = Stack(mcfg, mcfg.decoder_layers)
        self.norm = RMSNorm(mcfg.dim, mcfg.norm_eps)
        self.head = nn.Linear(mcfg.dim, vocab.n_classes, bias=False)  # not tied (spec 4.3)
        init = _init_paper if mcfg.get("init", "normal") == "paper" else _init_weights
        self.apply(init)
        obj_name, obj_params = component_params("objective", mcfg.objective)
        self.dense = obj_name == "dense"
        self.pix_weight = float(mcfg.get("pix_weight", 1.0))  # configs saved before it: 1
        self.local = None
        if self.dense and not isinstance(self.pixels, FullCausal):
            # built and initialized last: the shared weights are drawn exactly as for the
            # paper's objective (same seed, same initial model apart from the local decoder)
            self.local = LocalDecoder(mcfg, obj_params, vocab.n_pix)
            self.local.apply(init)
        if mcfg.get("compile", False):
            compile_blocks(self)

    def forward(self, batch: Batch, every_pixel: bool = False) -> ModelOutput:
        """-> logits at the batch's elements, and what else the objective scores (ModelOutput).

        `every_pixel`: full_causal also scores every pixel token (validation reports it as
        `val/pix_nll_all`); the dense objective always does.
        """
        x_words = self.word_embed(batch["input_ids"])  # (B, T, dim)
        inp = self.pixels(batch, x_words)  # DecoderInputs: T' decoder tokens (T, or one per pixel)
        h = self.norm(self.decoder(inp.x, inp.positions, inp.valid))  # (B, T', dim)
        if inp.pixel_targets is not None and (every_pixel or self.dense):
            pixel_logits = self.head(h)  # (B, T', C): every pixel predicts the next
            logits = pixel_logits.gather(
                1, inp.gather[..., None].expand(-1, -1, self.vocab.n_classes)
            )  # (B, T, C)
            return ModelOutput(logits, pixel_logits=pixel_logits, pixel_targets=inp.pixel_targets)
        # the paper's targets only
        h = h.gather(1, inp.gather[..., None].expand(-1, -1, h.shape[-1]))  # (B, T, dim)
        logits = self.head(h)  # (B, T, C)
        if self.local is None:
            return ModelOutput(logits)
        dense_logits, dense_targets = self.local_logits(batch, h)
        return ModelOutput(logits, dense_logits=dense_logits, dense_targets=dense_targets)

    def local_logits(self, batch: Batch, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense objective: the local decoder over every window that is a target, conditioned
        on the decoder output (B, T, dim) at the element that predicts it -> dense_logits
        (n, P, n_pix), dense_targets (n, P)."""
        b_idx, t_idx = (batch["targets"] >= self.vocab.n_words).nonzero(as_tuple=True)  # (n,)
        win = next_window_slot(batch)[b_idx, t_idx]  # (n,) window predicted at each
        pix = batch["pix"][b_idx, win]  # (n, P)
        emb = self.pixels.embed(pix).to(h.dtype)  # (n, P, dim)
        logits = self.local(h[b_idx, t_idx], emb)  # (n, P, n_pix)
        ok = batch["pix_pos"][b_idx, win] >= 0
        return logits, torch.where(ok, pix, IGNORE)

    # ---- generation (pixword_lit.infer.generate, .sample): prefill once, then one step per element ----
    def prefill_hidden(self, batch: Batch, cache) -> torch.Tensor:
        """Run the prompt batch through the whole model once, filling `cache` (a
        `layers.DecoderCache` of self.decoder) -> (B, dim) normed decoder output after each
        sample's last element.

        Samples are right-padded (`elements.collate`); new elements all continue at the common
        slot cache.length, and the padding slots between stay invalid keys, so each sample
        attends exactly to its own prompt. RoPE positions continue from each sample's count.
        """
        x_words = self.word_embed(batch["input_ids"])  # (B, T, dim)
        inp = self.pixels(batch, x_words)  # DecoderInputs, T' decoder tokens
        valid, gather = inp.valid, inp.gather
        h = self.decoder(inp.x, inp.positions, valid, cache)  # (B, T', dim)
        t = batch["elem_valid"].shape[1]
        idx = torch.arange(t, device=valid.device)
        last = torch.where(batch["elem_valid"], idx, -1).max(1).values  # (B,) last element
        slot = gather.gather(1, last[:, None])  # (B, 1) decoder slot scoring it
        cache.next_pos = valid.sum(1)  # (B,) positions taken so far
        return self.norm(h.gather(1, slot[..., None].expand(-1, 1, h.shape[-1]))[:, 0])

    def step_hidden(self, x: torch.Tensor, cache) -> torch.Tensor:
        """(B, 1, dim) input embeddings of one new element per sample -> (B, dim) normed output."""
        pos = cache.next_pos[:, None]  # (B, 1)
        h = self.decoder(x, pos, torch.ones_like(pos, dtype=torch.bool), cache)
        cache.next_pos = cache.next_pos + 1
        return self.norm(h[:, 0])

    def prefill(self, batch: Batch, cache) -> torch.Tensor:
        """-> (B, C) logits of the element after each sample's prompt."""
        return self.head(self.prefill_hidden(batch, cache))

    def step(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """(B,) word ids appended after the cached sequence -> (B, C) logits of the next one."""
        return self.head(self.step_hidden(self.word_embed(ids[:, None]), cache))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def compile_blocks(model: nn.Module) -> None:
    """`model.compile`: torch.compile every transformer block in place (parameter names and
    checkpoints unchanged; dynamic shapes, so batches of other lengths do not recompile)."""
    for block in model.modules():
        if isinstance(block, Block):
            block.compile(dynamic=True)


def next_window_slot(batch: Batch) -> torch.Tensor:
    """(B, T) window slot of the next valid element after each element, -1 if it is no window
    (the element whose output scores that window's pixels; spec section 5's targets)."""
    valid, slot = batch["elem_valid"], batch["window_slot"]
    t = valid.shape[1]
    nxt = next_valid_index(valid)
    return torch.where(nxt < t, slot.gather(1, nxt.clamp(max=t - 1)), -1)


def _init_weights(m: nn.Module) -> None:
    """`model.init: normal`: every linear layer and table N(0, 0.02) (GPT-2 style)."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


def _init_paper(m: nn.Module) -> None:
    """`model.init: paper`, the authors' (HaunLeung/upw src/model/model.py): tables
    xavier_normal (VocabEmbedding, PixEmbeding), linear layers and the head PyTorch's default
    uniform(+-1/sqrt(fan_in)) (nn.Linear), norms 1. Tables of the non-paper embeddings alike."""
    if isinstance(m, nn.Linear):
        m.reset_parameters()
    elif isinstance(m, nn.Embedding):
        nn.init.xavier_normal_(m.weight)


class LossTerms(NamedTuple):
    """Summed cross-entropies with their counts, for exact means over any number of batches,
    micro-batches and ranks (sum the terms, then divide).

    - `sum` / `n`: what training minimizes (first_pixel: word + first-pixel targets; dense:
      word + every pixel);
    - `pix_sum` / `pix_n` / `pix_correct`: the paper's first-pixel targets (every objective);
    - `word_sum` / `word_n`: word targets;
    - `pixel_all_sum` / `pixel_all_n`: every valid pixel, where the model predicts them (dense,
      or full_causal in evaluation); zeros elsewhere.
    """

    sum: torch.Tensor
    n: torch.Tensor
    pix_sum: torch.Tensor
    pix_n: torch.Tensor
    word_sum: torch.Tensor
    word_n: torch.Tensor
    pix_correct: torch.Tensor
    pixel_all_sum: torch.Tensor
    pixel_all_n: torch.Tensor

    def stack(self) -> torch.Tensor:
        """One detached float64 vector (for a single all-reduce); `unstack` reads it back."""
        return torch.stack([v.detach().double() for v in self])

    @classmethod
    def unstack(cls, v: torch.Tensor) -> LossTerms:
        return cls(*v.unbind())


def loss_terms(out: ModelOutput, targets: torch.Tensor, n_words: int, dense: bool = False,
               pix_weight: float = 1.0) -> LossTerms:
    """The batch's `LossTerms` from the model's output and the batch's targets; `sum` / `n`
    weigh the pixel targets by pix_weight (`model.pix_weight`), so `sum / n` is the weighted
    mean (at 1 the plain mean over every scored target, summed as before)."""
    logits = out.logits
    flat_t = targets.reshape(-1)
    flat_l = logits.reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat_l.float(), flat_t, ignore_index=IGNORE, reduction="none")
    scored = flat_t != IGNORE
    is_pix = scored & (flat_t >= n_words)
    is_word = scored & (flat_t < n_words)
    pix_sum, pix_n = (ce * is_pix).sum(), is_pix.sum()
    pix_correct = ((flat_l.argmax(-1) == flat_t) & is_pix).sum()
    word_sum, word_n = (ce * is_word).sum(), is_word.sum()
    all_sum, all_n = ce.new_zeros(()), is_pix.sum() * 0
    if out.dense_logits is not None:  # local decoder: position 0 is the paper's first pixel
        dl, dt = out.dense_logits.float(), out.dense_targets  # (n, P, n_pix), (n, P)
        dce = F.cross_entropy(dl.transpose(1, 2), dt, ignore_index=IGNORE, reduction="none")  # (n, P)
        pix_sum, pix_n = dce[:, 0].sum(), (dt[:, 0] != IGNORE).sum()
        pix_correct = ((dl[:, 0].argmax(-1) == dt[:, 0]) & (dt[:, 0] != IGNORE)).sum()
        all_sum, all_n = dce.sum(), (dt != IGNORE).sum()
    elif out.pixel_logits is not None:  # full_causal: every pixel token predicts the next
        pl, pt = out.pixel_logits.float(), out.pixel_targets  # (B, T', C), (B, T')
        all_sum = F.cross_entropy(pl.transpose(1, 2), pt, ignore_index=IGNORE, reduction="sum")
        all_n = (pt != IGNORE).sum()
    if dense:
        total, n = word_sum + all_sum, word_n + all_n
    else:
        total, n = ce.sum(), scored.sum()
    if pix_weight != 1.0:
        pix_part, pix_part_n = (all_sum, all_n) if dense else ((ce * is_pix).sum(), is_pix.sum())
        total, n = word_sum + pix_weight * pix_part, word_n + pix_weight * pix_part_n
    return LossTerms(total, n, pix_sum, pix_n, word_sum, word_n, pix_correct, all_sum, all_n)


def mean_loss(model: PixWordModel, batch: dict) -> torch.Tensor:
    """One batch's loss as a bare training step takes it: the mean over its scored targets
    (what `pixword bench` times and what a run's FLOP count runs)."""
    t = loss_terms(model(batch), batch["targets"], model.vocab.n_words, model.dense, model.pix_weight)
    return t.sum / t.n.clamp(min=1)
