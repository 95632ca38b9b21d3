"""Objectives: which pixels the model is trained to predict.

- `first_pixel` (the paper's, default): the decoder output before each window (at the
  previous window's summary, or at `<|image|>` for the first window) predicts the window's
  first pixel, through the shared head over words and pixels. One pixel per window is scored.
- `dense`: every valid pixel is predicted.
  * windowed attention (global_conditional, pooled) follows MEGABYTE (Yu et al. 2023, sec. 2):
    the decoder output that predicts window k+1 is projected and added to every input of a
    small causal **local decoder** over window k+1, whose inputs are that window's pixel
    embeddings shifted by one (a learned start vector at position 0). It predicts all P pixels
    of the window (pad pixels are inputs known from the geometry, never targets). The local
    decoder is separate from the image block, so windows stay independent and training
    parallel. Its position 0 predicts exactly the paper's target, so `val/pix_loss` compares
    both objectives on a common sub-task.
  * full_causal: every pixel token predicts the next one in window-major order, trained
    (the same quantity `first_pixel` full_causal runs report, untrained, as `val/pix_nll_all`).

Word targets, masks, packing and the decoder are the same under both objectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from pixword_lit.model.components.base import NoParams
from pixword_lit.model.layers import RMSNorm, Stack


@dataclass
class DenseParams:
    local_layers: int = 2  # causal layers of the local decoder (windowed attention only)
    local_dim: Optional[int] = None  # width of the local decoder; null = model.dim


class FirstPixel:
    """The paper's objective: nothing beyond the shared head."""

    Params = NoParams


class Dense:
    Params = DenseParams


class LocalDecoder(nn.Module):
    """MEGABYTE's local model over one window: (n, dim) context, (n, P, dim) pixel embeddings
    -> (n, P, n_pix) logits, position j predicting pixel j from pixels < j and the context."""

    def __init__(self, mcfg, params: DenseParams, n_pix: int):
        super().__init__()
        dim = mcfg.dim
        local_dim = params.local_dim or dim
        lcfg = OmegaConf.merge(mcfg, {"dim": local_dim})
        self.context = nn.Linear(dim, local_dim, bias=False)  # global output -> every position
        self.inputs = nn.Identity() if local_dim == dim else nn.Linear(dim, local_dim, bias=False)
        self.start = nn.Parameter(torch.zeros(local_dim))  # input at position 0 (MEGABYTE's pad)
        self.stack = Stack(lcfg, params.local_layers, windowed=True)  # all valid: plain causal
        self.norm = RMSNorm(local_dim, mcfg.norm_eps)
        self.head = nn.Linear(local_dim, n_pix, bias=False)  # pixel classes only

    def shifted_inputs(self, context: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(n, dim), (n, P, dim) -> (n, P, local_dim): start, pixel 0 .. P-2, plus context."""
        x = self.inputs(emb)
        start = self.start.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([start, x[:, :-1]], 1) + self.context(context).to(x.dtype)[:, None]

    def step(self, context: torch.Tensor, prev_emb: torch.Tensor | None, j: int, cache) -> torch.Tensor:
        """Sampling: position j of the window, given the (n, dim) context and the embedding of
        pixel j-1 (None at j = 0), with a KV cache of self.stack -> (n, n_pix) logits."""
        if prev_emb is None:
            x = self.start.expand(context.shape[0], -1)
        else:
            x = self.inputs(prev_emb)
        x = (x + self.context(context).to(x.dtype))[:, None]  # (n, 1, local_dim)
        n = x.shape[0]
        pos = torch.full((n, 1), j, dtype=torch.long, device=x.device)
        h = self.stack(x, pos, torch.ones(n, 1, dtype=torch.bool, device=x.device), cache)
        return self.head(self.norm(h[:, 0]))

    def forward(self, context: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.shifted_inputs(context, emb)  # (n, P, local_dim)
        n, p, _ = x.shape
        pos = torch.arange(p, device=x.device).expand(n, p)  # local positions 0..P-1
        ones = torch.ones(n, p, dtype=torch.bool, device=x.device)  # pad pixels are known inputs
        return self.head(self.norm(self.stack(x, pos, ones)))  # (n, P, n_pix)


OBJECTIVES = {
    "first_pixel": FirstPixel,
    "dense": Dense,
}
