"""Attention approximations (spec sections 4 and 8): how pixels reach the decoder.

- `global_conditional` (the paper's): causal attention inside each window (the image block),
  one summary per window = the hidden state at its summary index, summaries in the decoder.
- `pooled`: the same image block, summary = mean of the window's valid hidden states.
- `full_causal`: no image block; every pixel is a decoder token in window-major order (the
  unapproximated reference). The decoder output at each window's summary-index pixel is
  what scores the paper's targets, so all variants are scored on the same targets.

Each variant turns a batch (`pixword_lit.model.batch.Batch`) and its word vectors into
`DecoderInputs`: the decoder's token vectors with their positions and validity, and `gather`,
which picks for every element of the batch the decoder token whose output scores that
element's target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pixword_lit.model.batch import Batch
from pixword_lit.model.components.base import NoParams
from pixword_lit.model.layers import Stack, next_valid_index
from pixword_lit.model.tokens import IGNORE


@dataclass
class DecoderInputs:
    """What an attention variant hands the decoder. T' decoder tokens: T' = T for the windowed
    variants (a window is one token, its summary), one per pixel for full_causal."""

    x: torch.Tensor  # (B, T', dim) input vectors: word embeddings, window summaries or pixels
    positions: torch.Tensor  # (B, T') int64 RoPE position of each token, -1 where invalid
    valid: torch.Tensor  # (B, T') bool: a key the decoder may attend to
    gather: torch.Tensor  # (B, T) int64 decoder token whose output scores element t's target
    # full_causal only: (B, T') class of the next valid token when it is a pixel, else IGNORE
    # (the every-pixel targets; see components/objective.py)
    pixel_targets: torch.Tensor | None = None


def _valid_windows(batch):
    """Flat (n, P) views of the windows that take part (masked and batch-padding dropped)."""
    keep = batch["window_valid"]  # (B, Nw)
    return keep, batch["pix"][keep], batch["pix_pos"][keep], batch["summary_index"][keep]


def _place_summaries(batch, summaries, keep, x_words):
    """Scatter (n, dim) summaries back to (B, Nw, dim) and into the window slots of x_words."""
    b, nw = keep.shape
    per_window = summaries.new_zeros(b, nw, summaries.shape[-1])
    per_window[keep] = summaries
    slot = batch["window_slot"]  # (B, T), -1 for word slots
    picked = per_window.gather(1, slot.clamp(min=0)[..., None].expand(-1, -1, summaries.shape[-1]))
    return torch.where((slot >= 0)[..., None], picked, x_words)


def _identity_gather(batch):
    b, t = batch["input_ids"].shape
    return torch.arange(t, device=batch["input_ids"].device).expand(b, t)


class GlobalConditional(nn.Module):
    """Image block over windows -> one summary per window at its summary index."""

    Params = NoParams

    def __init__(self, cfg, embed: nn.Module, vocab):
        super().__init__()
        self.embed = embed
        # patch_linear embeds a whole window at once: no per-pixel tokens, no image block
        self.block = Stack(cfg, cfg.image_layers, windowed=True) if embed.per_pixel else None

    def summarize(self, h, summary_index, pos):
        # h (n, P, dim) -> (n, dim): the hidden state at each window's last valid pixel
        return h.gather(1, summary_index[:, None, None].expand(-1, 1, h.shape[-1])).squeeze(1)

    def encode_windows(self, pix, pos, summary_index):
        """(n, P) pix ids -> (n, dim) window summaries."""
        if self.block is None:
            return self.embed(pix)
        h = self.block(self.embed(pix), pos, pos >= 0)  # (n, P, dim), causal inside windows
        return self.summarize(h, summary_index, pos)

    def forward(self, batch: Batch, x_words: torch.Tensor) -> DecoderInputs:
        """x_words (B, T, dim): word embeddings of every element (window slots overwritten)."""
        keep, pix, pos, summary_index = _valid_windows(batch)  # (B, Nw), (n, P), (n, P), (n,)
        summaries = self.encode_windows(pix, pos, summary_index)  # (n, dim)
        x = _place_summaries(batch, summaries.to(x_words.dtype), keep, x_words)  # (B, T, dim)
        return DecoderInputs(x, batch["positions"], batch["elem_valid"], _identity_gather(batch))


class Pooled(GlobalConditional):
    """Like the paper's, but the summary is the mean of the window's valid hidden states."""

    def summarize(self, h, summary_index, pos):
        w = (pos >= 0).to(h.dtype)[..., None]  # (n, P, 1)
        return (h * w).sum(1) / w.sum(1).clamp(min=1.0)


@dataclass
class FullCausalParams:
    # exact attention costs (pixels per image)^2 per layer; larger images are refused at config
    # time instead of running out of memory mid-run
    max_pixels: int = 9216  # image_size^2 limit (96 x 96)


class FullCausal(nn.Module):
    """Every pixel a decoder token (window-major); exact causal attention, no image block."""

    Params = FullCausalParams

    def __init__(self, cfg, embed: nn.Module, vocab):
        super().__init__()
        self.embed = embed
        self.n_words = vocab.n_words

    def forward(self, batch: Batch, x_words: torch.Tensor) -> DecoderInputs:
        """x_words (B, T, dim) -> T' = (words + valid and pad pixels) tokens per sample."""
        slot = batch["window_slot"]  # (B, T)
        b, t = slot.shape
        p = batch["pix"].shape[-1]
        is_win = slot >= 0
        lengths = torch.where(is_win, p, 1)  # a window element expands to its P pixels
        ends = lengths.cumsum(1)  # (B, T)
        starts = ends - lengths
        tp = int(ends[:, -1].max())
        j = torch.arange(tp, device=slot.device).expand(b, tp).contiguous()  # (B, T')
        elem = torch.searchsorted(ends, j, right=True).clamp(max=t - 1)  # element of each token
        sub = j - starts.gather(1, elem)  # pixel index inside the window
        in_seq = j < ends[:, -1:]
        e_slot = slot.gather(1, elem).clamp(min=0)
        e_win = is_win.gather(1, elem)
        sub_c = sub.clamp(0, p - 1)
        bidx = torch.arange(b, device=slot.device)[:, None]
        pix_ids = batch["pix"][bidx, e_slot, sub_c]  # (B, T')
        pix_ok = batch["pix_pos"][bidx, e_slot, sub_c] >= 0
        x_pix = self.embed(pix_ids).to(x_words.dtype)
        x_w = x_words.gather(1, elem[..., None].expand(-1, -1, x_words.shape[-1]))
        x = torch.where(e_win[..., None], x_pix, x_w)
        valid = in_seq & batch["elem_valid"].gather(1, elem) & (~e_win | pix_ok)
        positions = torch.where(valid, valid.long().cumsum(1) - 1, -1)
        summary = batch["summary_index"].gather(1, slot.clamp(min=0))  # (B, T)
        gather = starts + torch.where(is_win, summary, 0)
        # every-pixel targets: each valid token predicts the next valid token, if it is a pixel
        cls = torch.where(e_win, self.n_words + pix_ids, batch["input_ids"].gather(1, elem))
        return DecoderInputs(x, positions, valid, gather, _next_valid_pixel_targets(cls, valid, e_win))


def _next_valid_pixel_targets(cls, valid, is_pixel):
    """(B, T') class of the next valid token when that token is a pixel, else IGNORE."""
    tp = cls.shape[1]
    nxt = next_valid_index(valid)
    has = valid & (nxt < tp)
    nxt_c = nxt.clamp(max=tp - 1)
    tgt = cls.gather(1, nxt_c)
    return torch.where(has & is_pixel.gather(1, nxt_c), tgt, IGNORE)


ATTENTIONS = {
    "global_conditional": GlobalConditional,
    "full_causal": FullCausal,
    "pooled": Pooled,
}
