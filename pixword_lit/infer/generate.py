"""Text generation from a trained model: KV-cached decoding and sampling.

A prompt is a list of elements, as in training (`elements.build_sample`): word-id arrays and
`elements.Windows`. The prompt batch is run once through the whole model (`PixWordModel.prefill`:
embedding, image block, summaries, decoder), which fills a per-layer KV cache of the decoder
(`layers.DecoderCache`); every new word token then costs one decoder step
(`PixWordModel.step`). Only word classes are sampled (pix classes are masked, and so are
`<pad>` and `<s>`); generation stops at `</s>`, at `<|image|>` (generating pixels needs a
model that predicts every pixel; reported as the stop reason), or after `max_new_tokens`.

`generate_uncached` is the reference: it rebuilds the whole sample and runs the full forward
for every new token. The tests require both to give the same tokens and logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pixword_lit.data.elements import build_sample, collate
from pixword_lit.errors import GenerateError  # noqa: F401  (raised here; imported from here too)
from pixword_lit.model.components.attention import FullCausal
from pixword_lit.model.tokens import BOS, EOS, IMG_START, PAD, Vocab


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely words
    top_p: float | None = None  # keep the smallest set of words with probability >= top_p
    max_new_tokens: int = 64
    seed: int = 0
    stop: bool = True  # False: never pick </s> or <|image|> (fixed-length runs, benchmarks)


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)  # generated word ids, stop token excluded
    stop: str = "max_new_tokens"  # "eos" | "image" | "max_new_tokens"
    logits: list[torch.Tensor] = field(default_factory=list)  # (C,) before each token, if kept


STOPS = {EOS: "eos", IMG_START: "image"}


def prompt_sample(elements: list, vocab: Vocab, max_seq_len: int) -> dict:
    """The model inputs of `<s> elements` (the element after them is what is generated)."""
    sample = build_sample(elements, vocab, max_seq_len)
    if sample["truncated"]:
        raise GenerateError(f"the prompt is longer than data.max_seq_len = {max_seq_len} elements")
    return sample


def choose(logits: torch.Tensor, n_words: int, s: Sampling, generator: torch.Generator | None):
    """(B, C) logits -> (B,) word ids: greedy, or temperature / top-k / top-p sampling."""
    w = logits[:, :n_words].float().clone()  # word classes only: pix classes are never sampled
    w[:, [PAD, BOS]] = -float("inf")  # never a continuation
    if not s.stop:
        w[:, list(STOPS)] = -float("inf")
    return draw(w, s, generator)


def draw(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """(B, C) logits -> (B,) ids: greedy at temperature 0, else temperature, top-k and top-p
    sampling (shared by text generation and image sampling)."""
    w = logits.float()
    if s.temperature <= 0:
        return w.argmax(-1)
    w = w / s.temperature
    if s.top_k:
        kth = w.topk(min(s.top_k, w.shape[-1]), -1).values[:, -1:]  # (B, 1)
        w = w.masked_fill(w < kth, -float("inf"))
    if s.top_p is not None and s.top_p < 1:
        sorted_w, order = w.sort(-1, descending=True)
        probs = sorted_w.softmax(-1)
        drop = probs.cumsum(-1) - probs >= s.top_p  # the first id is always kept
        w = w.scatter(1, order, sorted_w.masked_fill(drop, -float("inf")))
    return torch.multinomial(w.softmax(-1), 1, generator=generator)[:, 0]


def _record(out: list[Generation], done: torch.Tensor, ids: torch.Tensor, logits, keep_logits):
    for b, g in enumerate(out):
        if done[b]:
            continue
        t = int(ids[b])
        if keep_logits:
            g.logits.append(logits[b].detach().float().cpu())
        if t in STOPS:
            g.stop, done[b] = STOPS[t], True
        else:
            g.tokens.append(t)


@torch.no_grad()
def generate(model, prompts: list[list], vocab: Vocab, max_seq_len: int, sampling: Sampling,
             keep_logits: bool = False) -> list[Generation]:
    """Batched KV-cached generation; prompts of different lengths are right-padded."""
    model.eval()
    samples = [prompt_sample(p, vocab, max_seq_len) for p in prompts]
    p = model.cfg.window_size**2
    batch = collate(samples, vocab.pix_pad, p)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    # decoder slots of the prompt: elements, or every pixel token for full_causal
    n_slots = decoder_length(model, batch)
    cache = model.decoder.make_cache(len(samples), n_slots + sampling.max_new_tokens, device)
    gen = torch.Generator(device=device).manual_seed(sampling.seed)
    logits = model.prefill(batch, cache)
    out = [Generation() for _ in samples]
    done = torch.zeros(len(samples), dtype=torch.bool)
    for i in range(sampling.max_new_tokens):
        ids = choose(logits, vocab.n_words, sampling, gen)
        _record(out, done, ids, logits, keep_logits)
        if bool(done.all()) or i == sampling.max_new_tokens - 1:
            break
        logits = model.step(ids, cache)
    return out


def decoder_length(model, batch) -> int:
    if isinstance(model.pixels, FullCausal):  # every pixel token is a decoder slot
        p = batch["pix"].shape[-1]
        per_elem = torch.where(batch["window_slot"] >= 0, p, 1)
        return int(per_elem.sum(1).max())
    return batch["input_ids"].shape[1]


@torch.no_grad()
def generate_uncached(model, prompt: list, vocab: Vocab, max_seq_len: int, sampling: Sampling,
                      keep_logits: bool = False) -> Generation:
    """Reference decoding: rebuild `<s> prompt generated` and run the full forward per token."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(sampling.seed)
    out, done = Generation(), torch.zeros(1, dtype=torch.bool)
    p = model.cfg.window_size**2
    for _ in range(sampling.max_new_tokens):
        sample = prompt_sample([*prompt, np.array(out.tokens, dtype=np.int64)], vocab,
                               max_seq_len + sampling.max_new_tokens)
        batch = {k: v.to(device) for k, v in collate([sample], vocab.pix_pad, p).items()}
        logits = model(batch).logits  # (1, T, C) at every element
        last = logits[:, len(sample["input_ids"]) - 1]  # (1, C) after the last element
        ids = choose(last, vocab.n_words, sampling, gen)
        _record([out], done, ids, last, keep_logits)
        if bool(done.all()):
            break
    return out
