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
        self.apply(_init_weights)

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

    # ---- generation (pixword_lit.generate): prefill once, then one decoder step per token ----
    def prefill(self, batch: dict, cache) -> torch.Tensor:
        """Run the prompt batch through the whole model once, filling `cache` (a
        `layers.DecoderCache` of self.decoder) -> (B, C) logits after each sample's last element.

        Samples are right-padded (`image.collate`); new tokens all continue at the common slot
        cache.length, and the padding slots between stay invalid keys, so each sample attends
        exactly to its own prompt. RoPE positions continue from each sample's own count.
        """
        x_words = self.word_embed(batch["input_ids"])  # (B, T, dim)
        x, positions, valid, gather, _ = self.pixels(batch, x_words)  # (B, T', dim)
        h = self.decoder(x, positions, valid, cache)  # (B, T', dim)
        t = batch["elem_valid"].shape[1]
        idx = torch.arange(t, device=valid.device)
        last = torch.where(batch["elem_valid"], idx, -1).max(1).values  # (B,) last element
        slot = gather.gather(1, last[:, None])  # (B, 1) decoder slot scoring it
        cache.next_pos = valid.sum(1)  # (B,) positions taken so far
        h_last = h.gather(1, slot[..., None].expand(-1, 1, h.shape[-1]))[:, 0]  # (B, dim)
        return self.head(self.norm(h_last))

    def step(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """(B,) word ids appended after the cached sequence -> (B, C) logits of the next one."""
        x = self.word_embed(ids[:, None])  # (B, 1, dim)
        pos = cache.next_pos[:, None]  # (B, 1)
        h = self.decoder(x, pos, torch.ones_like(pos, dtype=torch.bool), cache)
        cache.next_pos = cache.next_pos + 1
        return self.head(self.norm(h[:, 0]))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


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
