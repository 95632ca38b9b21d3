"""The unified pix-token / word-token model (spec sections 4 and 5), a plain nn.Module.

    pix ids --embedding--> image block (per window) --summaries--+
    word ids --word table------------------------------------------+--> decoder --> head
                                                                       (V + n_pix classes)

Which image block (or none) and which pix embedding are components picked by name
(`pixword_lit.components`); the decoder, the word table and the head are shared by all.
The batch layout is produced by `pixword_lit.image` (see `build_sample`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixword_lit.components import component_params
from pixword_lit.components.attention import ATTENTIONS
from pixword_lit.components.embedding import build_embedding
from pixword_lit.layers import RMSNorm, Stack
from pixword_lit.tokens import IGNORE, Vocab


class PixWordModel(nn.Module):
    def __init__(self, mcfg, vocab: Vocab, folding):
        super().__init__()
        self.cfg, self.vocab = mcfg, vocab
        emb_name, _ = component_params("embedding", mcfg.embedding)
        attn_name, _ = component_params("attention", mcfg.attention)
        pixels_per_window = mcfg.window_size**2
        self.word_embed = nn.Embedding(vocab.n_words, mcfg.dim)
        pix_embed = build_embedding(emb_name, mcfg.dim, folding, pixels_per_window)
        self.pixels = ATTENTIONS[attn_name](mcfg, pix_embed, vocab)  # embedding + image block
        self.decoder = Stack(mcfg, mcfg.decoder_layers)
        self.norm = RMSNorm(mcfg.dim, mcfg.norm_eps)
        self.head = nn.Linear(mcfg.dim, vocab.n_classes, bias=False)  # not tied (spec 4.3)
        self.apply(_init_paper if mcfg.get("init", "normal") == "paper" else _init_weights)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """-> logits (B, T, V + n_pix) at the batch's element positions, and extras."""
        x_words = self.word_embed(batch["input_ids"])  # (B, T, dim)
        x, positions, valid, gather, extras = self.pixels(batch, x_words)  # (B, T', dim)
        h = self.norm(self.decoder(x, positions, valid))
        if "pixel_targets" in extras and not self.training:
            # full_causal in evaluation: logits at every pixel token for val/pix_loss_all
            extras["pixel_logits"] = self.head(h)  # (B, T', C)
            logits = extras["pixel_logits"].gather(
                1, gather[..., None].expand(-1, -1, self.vocab.n_classes)
            )
        else:
            extras.pop("pixel_targets", None)  # training scores only the paper's targets
            h = h.gather(1, gather[..., None].expand(-1, -1, h.shape[-1]))  # (B, T, dim)
            logits = self.head(h)
        return logits, extras

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


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


def loss_terms(logits: torch.Tensor, targets: torch.Tensor, n_words: int) -> dict:
    """Summed cross-entropy split into word and pix parts, with counts (for exact means)."""
    flat_t = targets.reshape(-1)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), flat_t, ignore_index=IGNORE, reduction="none"
    )
    scored = flat_t != IGNORE
    is_pix = scored & (flat_t >= n_words)
    is_word = scored & (flat_t < n_words)
    correct = (logits.reshape(-1, logits.shape[-1]).argmax(-1) == flat_t) & is_pix
    return {
        "sum": ce.sum(),
        "n": scored.sum(),
        "pix_sum": (ce * is_pix).sum(),
        "pix_n": is_pix.sum(),
        "word_sum": (ce * is_word).sum(),
        "word_n": is_word.sum(),
        "pix_correct": correct.sum(),
    }
