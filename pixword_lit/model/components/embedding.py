"""Pix embeddings (spec sections 4.1 and 8): how pix ids become vectors.

Per-pixel embeddings map ids (..., ) -> (..., dim) and feed the image block or, for
full causal attention, the decoder. `patch_linear` is the ViT/Fuyu-style baseline: it maps a
whole window (n, P) straight to one summary vector, with no per-pixel tokens.
Every table has a row (or vector) for the pix pad id, which never reaches a target.
Every entry is built the same way: `EMBEDDINGS[name](dim, folding, pixels_per_window)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pixword_lit.model.components.base import NoParams


def _color_table(folding) -> torch.Tensor:
    """(n_pix + 1, 3) folded colors scaled to [-1, 1]; the pad row is 0."""
    colors = torch.from_numpy(folding.colors().astype(np.float32)) / 127.5 - 1.0
    return torch.cat([colors, torch.zeros(1, 3)])


class PixTable(nn.Module):
    """The paper's: one learned row per pix token plus the pad row, (L^3 + 1) x dim."""

    Params = NoParams
    per_pixel = True

    def __init__(self, dim: int, folding, pixels_per_window: int):
        super().__init__()
        self.table = nn.Embedding(folding.n_pix + 1, dim)

    def forward(self, ids):
        return self.table(ids)


class Factorized(nn.Module):
    """One table of L (+ pad) rows per channel, summed: 3 (L + 1) x dim parameters."""

    Params = NoParams
    per_pixel = True

    def __init__(self, dim: int, folding, pixels_per_window: int):
        super().__init__()
        n_levels = folding.levels
        levels = torch.from_numpy(folding.channel_levels()).long()  # (n_pix, 3)
        levels = torch.cat([levels, torch.full((1, 3), n_levels)])  # pad id -> pad row
        self.register_buffer("levels", levels, persistent=False)
        self.tables = nn.ModuleList(nn.Embedding(n_levels + 1, dim) for _ in range(3))

    def forward(self, ids):
        lv = self.levels[ids]  # (..., 3)
        return sum(table(lv[..., c]) for c, table in enumerate(self.tables))


class LinearRGB(nn.Module):
    """A linear map of the three folded channel values (no table); pad gets its own vector."""

    Params = NoParams
    per_pixel = True

    def __init__(self, dim: int, folding, pixels_per_window: int):
        super().__init__()
        self.register_buffer("colors", _color_table(folding), persistent=False)
        self.pad_id = folding.n_pix
        self.proj = nn.Linear(3, dim)
        self.pad = nn.Parameter(torch.zeros(dim))

    def forward(self, ids):
        x = self.proj(self.colors[ids])
        return torch.where((ids == self.pad_id)[..., None], self.pad.to(x.dtype), x)


@dataclass
class PatchParams:
    pass


class PatchLinear(nn.Module):
    """ViT/Fuyu-style: a window's folded pixels, flattened, projected to one vector.

    Input (n, P) ids -> (n, dim). Each pixel contributes its 3 colors and a validity flag,
    so partly padded windows are distinguishable from black pixels.
    """

    Params = PatchParams
    per_pixel = False

    def __init__(self, dim: int, folding, pixels_per_window: int):
        super().__init__()
        self.register_buffer("colors", _color_table(folding), persistent=False)
        self.pad_id = folding.n_pix
        self.proj = nn.Linear(4 * pixels_per_window, dim)

    def forward(self, ids):
        valid = (ids != self.pad_id).unsqueeze(-1)  # (n, P, 1)
        feats = torch.cat([self.colors[ids], valid.float()], -1)  # (n, P, 4)
        return self.proj(feats.flatten(1).to(self.proj.weight.dtype))  # (n, dim)


EMBEDDINGS = {
    "pix_table": PixTable,
    "factorized": Factorized,
    "linear_rgb": LinearRGB,
    "patch_linear": PatchLinear,
}

