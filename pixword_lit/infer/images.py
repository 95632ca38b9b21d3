"""Image sampling and completion from `dense` models (components/objective.py).

Window by window, in window-major order (spec section 3): the decoder output before window k
(after `<|image|>`, or after window k-1's summary) conditions the local decoder, which
samples the window's pixels one by one (pad pixels are known from the image geometry and
never sampled); the finished window then goes through the image block, and its summary is one
decoder step. Both the decoder and the local decoder keep KV caches (`layers.DecoderCache`).
For full_causal every pixel is a decoder token: one decoder step per pixel.

A template `elements.Windows` fixes the geometry (which pixels are valid); completion keeps the
pixels of its top window rows. The log-probability of every sampled pixel under the model
(temperature 1, before top-k; for full_causal over all of the head's classes, as its NLL is
scored, though only pixel classes are drawn) is summed as it is drawn, so it equals the
model's teacher-forced NLL of the result. `generate_images_uncached` is the reference: the full
forward over the whole sample for every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pixword_lit.data.elements import Windows, build_sample, collate
from pixword_lit.infer.generate import GenerateError, Sampling, decoder_length, draw, prompt_sample
from pixword_lit.model.components.attention import FullCausal
from pixword_lit.model.tokens import IGNORE, IMG_START, Vocab


@dataclass
class GeneratedImage:
    pix: np.ndarray  # (N, P) pix ids in window-major order, the pad id at pad pixels
    logprob: float  # sum of log p(pixel) over the sampled pixels (temperature 1)
    sampled: int  # pixels drawn (kept and pad pixels excluded)


def blank(size: int, window: int, pad_id: int) -> Windows:
    """A full S x S image: every pixel valid (unconditional samples)."""
    g, p = size // window, window * window
    pos = np.arange(g * g * p).reshape(g * g, p)
    return Windows(np.zeros((g * g, p), np.int64), pos, np.full(g * g, p - 1), np.ones(g * g, bool),
                   0.0, size * size)


def kept_windows(size: int, window: int, keep_rows: int) -> np.ndarray:
    """(N,) windows kept by `--keep-rows K`: the top K pixel rows, rounded up to whole window
    rows (generation proceeds window by window, so a window is kept whole or sampled whole)."""
    g = size // window
    rows = math.ceil(keep_rows / window)
    return (np.arange(g * g) // g) < rows


def _check(model) -> None:
    if not getattr(model, "dense", False):
        raise GenerateError("this model was trained with the paper's first_pixel objective, which "
                            "predicts one pixel per window; sampling whole images needs a "
                            "model.objective: dense checkpoint")


@torch.no_grad()
def generate_images(model, prompt: list, template: Windows, vocab: Vocab, n: int, sampling: Sampling,
                  keep: np.ndarray | None = None, max_seq_len: int = 4096) -> list[GeneratedImage]:
    """n images of the template's geometry after `<s> prompt <|image|>` (KV-cached)."""
    _check(model)
    model.eval()
    device = next(model.parameters()).device
    full_causal = isinstance(model.pixels, FullCausal)
    p = template.pix.shape[1]
    keep = np.zeros(len(template.pix), bool) if keep is None else keep
    sample = prompt_sample([*prompt, np.array([IMG_START])], vocab, max_seq_len)
    batch = {k: v.to(device) for k, v in collate([sample] * n, vocab.pix_pad, p).items()}
    n_valid = int((template.pos >= 0).sum()) if full_causal else int(template.valid.sum())
    cache = model.decoder.make_cache(n, decoder_length(model, batch) + n_valid + 1, device)
    gen = torch.Generator(device=device).manual_seed(sampling.seed)
    h = model.prefill_hidden(batch, cache)  # (n, dim): predicts the first window
    pix = torch.as_tensor(template.pix, device=device)[None].repeat(n, 1, 1)  # (n, N, P)
    logprob = torch.zeros(n, dtype=torch.float64, device=device)
    drawn = 0
    valid_windows = np.flatnonzero(template.valid)
    for i, k in enumerate(valid_windows):  # masked windows take no part (spec section 3)
        ok = template.pos[k] >= 0
        if full_causal:
            for j in np.flatnonzero(ok):  # one decoder step per valid pixel
                if not keep[k]:
                    full = model.head(h)  # (n, C): drawn among pixel classes, scored over all
                    pix[:, k, j] = draw(full[:, vocab.n_words :], sampling, gen)
                    logprob += _logp(full, pix[:, k, j] + vocab.n_words)
                    drawn += 1
                h = model.step_hidden(model.pixels.embed(pix[:, k, j])[:, None].to(h.dtype), cache)
            continue
        if not keep[k]:
            lcache = model.local.stack.make_cache(n, p, device)
            for j in range(p):
                prev = None if j == 0 else model.pixels.embed(pix[:, k, j - 1]).to(h.dtype)
                logits = model.local.step(h, prev, j, lcache)  # (n, n_pix)
                if ok[j]:  # pad pixels keep the pad id: known from the geometry
                    pix[:, k, j] = draw(logits, sampling, gen)
                    logprob += _logp(logits, pix[:, k, j])
                    drawn += 1
        if i + 1 < len(valid_windows):  # the window's summary is the next decoder input
            pos = torch.as_tensor(template.pos[k], device=device).expand(n, p)
            idx = torch.as_tensor(template.summary_index[k], device=device).expand(n)
            summary = model.pixels.encode_windows(pix[:, k], pos, idx)  # (n, dim)
            h = model.step_hidden(summary[:, None].to(h.dtype), cache)
    return [GeneratedImage(pix[b].cpu().numpy(), float(logprob[b]), drawn) for b in range(n)]


def _logp(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), -1).gather(1, ids[:, None])[:, 0]


@torch.no_grad()
def generate_images_uncached(model, prompt: list, template: Windows, vocab: Vocab, sampling: Sampling,
                    keep: np.ndarray | None = None) -> GeneratedImage:
    """Reference: rebuild `<s> prompt <|image|> windows ...` and run the full forward for every
    sampled pixel, reading the logits that predict it."""
    _check(model)
    model.eval()
    device = next(model.parameters()).device
    full_causal = isinstance(model.pixels, FullCausal)
    keep = np.zeros(len(template.pix), bool) if keep is None else keep
    img = Windows(template.pix.copy(), template.pos, template.summary_index, template.valid,
                  template.fold_se, template.n_pixels)
    gen = torch.Generator(device=device).manual_seed(sampling.seed)
    p = img.pix.shape[1]
    logprob, drawn = 0.0, 0
    order = [(k, j) for k in np.flatnonzero(img.valid) for j in np.flatnonzero(img.pos[k] >= 0)]
    # images in the prompt come first among the targets: their windows and pixels
    earlier = [w for w in prompt if isinstance(w, Windows)]
    rows_before = sum(int(w.valid.sum()) for w in earlier)
    pixels_before = sum(int((w.pos >= 0).sum()) for w in earlier)
    rank = {k: rows_before + r for r, k in enumerate(np.flatnonzero(img.valid))}  # local row of k
    for m, (k, j) in enumerate(order):
        if keep[k]:
            continue
        s = build_sample([*prompt, img], vocab, 1 << 20)
        batch = {key: v.to(device) for key, v in collate([s], vocab.pix_pad, p).items()}
        out = model(batch, every_pixel=True)
        if full_causal:  # the m-th pixel target is predicted by the m-th scored token
            at = torch.nonzero(out.pixel_targets[0] != IGNORE)[pixels_before + m, 0]
            full = out.pixel_logits[0, at][None]  # (1, C)
            t = draw(full[:, vocab.n_words :], sampling, gen)
            logprob += float(_logp(full, t + vocab.n_words))
        else:
            logits = out.dense_logits[rank[k], j][None]  # (1, n_pix)
            t = draw(logits, sampling, gen)
            logprob += float(_logp(logits, t))
        img.pix[k, j] = int(t)
        drawn += 1
    return GeneratedImage(img.pix, logprob, drawn)


def to_rgb(pix: np.ndarray, folding, size: int, window: int, pad_rgb=(255, 0, 255)) -> np.ndarray:
    """(N, P) window-major pix ids -> (S, S, 3) uint8, pad pixels in a color no fold makes."""
    colors = np.concatenate([folding.colors(), np.array([pad_rgb], np.uint8)])
    g = size // window
    per = colors[np.minimum(pix, len(colors) - 1)]  # (N, P, 3); pad id = n_pix -> pad color
    return per.reshape(g, g, window, window, 3).transpose(0, 2, 1, 3, 4).reshape(size, size, 3)
