"""KV-cached generation equals the uncached reference, for every variant that has a decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixword_lit.data.elements import image_windows
from pixword_lit.infer.generate import GenerateError, Sampling, choose, generate, generate_uncached
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.pixword import PixWordModel
from pixword_lit.model.tokens import BOS, EOS, IMG_START, PAD, Vocab
from pixword_lit.system.config import DEBUG_MODEL, load_config

SIZE, WINDOW, N_WORDS = 8, 4, 40
TINY = [*DEBUG_MODEL, f"model.image_size={SIZE}", f"model.window_size={WINDOW}"]
# written out, not derived from the code under test: every attention x embedding pair with a
# decoder (patch_linear has no per-pixel tokens, so it pairs with global_conditional only)
COMBOS = [
    ("global_conditional", "pix_table"), ("global_conditional", "factorized"),
    ("global_conditional", "linear_rgb"), ("global_conditional", "patch_linear"),
    ("pooled", "pix_table"), ("pooled", "factorized"), ("pooled", "linear_rgb"),
    ("full_causal", "pix_table"), ("full_causal", "factorized"), ("full_causal", "linear_rgb"),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def make_model(attn: str, emb: str, seed: int = 0):
    cfg = load_config(None, TINY + [f"model.attention.name={attn}", f"model.embedding.name={emb}"])
    folding = UniformFolding(64)
    vocab = Vocab(N_WORDS, folding.n_pix)
    torch.manual_seed(seed)
    model = PixWordModel(cfg.model, vocab, folding)
    with torch.no_grad():  # larger logits than the 0.02 init: greedy choices far from ties
        model.head.weight.mul_(20)
    return model.eval(), vocab, folding


def prompts(folding, vocab):
    """Different lengths: text + square image + text; a wide image (bottom windows fully
    masked, middle ones partly padded) + a second image + text; text alone."""
    rng = np.random.default_rng(3)

    def win(h, w):
        return image_windows(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), SIZE, WINDOW, folding, vocab)

    return [
        [np.array([6, 7, 8]), win(SIZE, SIZE), np.array([9, 10])],
        [win(3, SIZE), win(SIZE, 5), np.array([11, 12, 13, 14])],
        [np.array([20, 21])],
    ]


@pytest.mark.parametrize("attn,emb", COMBOS)
def test_cached_greedy_equals_uncached_loop(attn, emb):
    model, vocab, folding = make_model(attn, emb)
    ps = prompts(folding, vocab)
    s = Sampling(max_new_tokens=6)
    cached = generate(model, ps, vocab, 128, s, keep_logits=True)  # one batch, right-padded
    for p, c in zip(ps, cached):
        ref = generate_uncached(model, p, vocab, 128, s, keep_logits=True)
        assert c.tokens == ref.tokens and c.stop == ref.stop
        assert len(c.logits) == len(ref.logits) > 0
        for a, b in zip(c.logits, ref.logits):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # each sample alone gives what it gave in the batch: padding does not leak across samples
    for p, c in zip(ps, cached):
        (alone,) = generate(model, [p], vocab, 128, s)
        assert alone.tokens == c.tokens


def test_sampling_is_reproducible_with_a_seed_and_matches_uncached():
    model, vocab, folding = make_model("global_conditional", "pix_table")
    p = prompts(folding, vocab)[0]
    s = Sampling(temperature=1.5, top_k=20, top_p=0.95, max_new_tokens=8, seed=7)
    a = generate(model, [p], vocab, 128, s)[0]
    b = generate(model, [p], vocab, 128, s)[0]
    ref = generate_uncached(model, p, vocab, 128, s)
    assert a.tokens == b.tokens == ref.tokens
    other = [generate(model, [p], vocab, 128, Sampling(temperature=1.5, max_new_tokens=8, seed=k))[0]
             for k in range(8, 12)]
    assert any(o.tokens != a.tokens for o in other)  # the seed matters


def test_choose_masks_pix_classes_and_respects_top_k_and_top_p():
    n_words, n_classes = 10, 30
    logits = torch.full((1, n_classes), -5.0)
    logits[0, 20] = 50.0  # a pix class: never chosen
    logits[0, PAD] = logits[0, BOS] = 40.0  # never a continuation
    logits[0, 7], logits[0, 8], logits[0, 9] = 3.0, 2.9, 0.0
    assert int(choose(logits, n_words, Sampling(), None)) == 7
    g = torch.Generator().manual_seed(0)
    picks = {int(choose(logits, n_words, Sampling(temperature=1.0, top_k=2), g)) for _ in range(200)}
    assert picks == {7, 8}
    # top_p 0.5: word 7 alone holds more than half the mass among the words
    picks = {int(choose(logits, n_words, Sampling(temperature=1.0, top_p=0.5), g)) for _ in range(100)}
    assert picks == {7}
    picks = {int(choose(logits, n_words, Sampling(temperature=5.0), g)) for _ in range(400)}
    assert 20 not in picks and PAD not in picks and BOS not in picks and len(picks) > 3
    logits[0, EOS] = logits[0, IMG_START] = 100.0
    assert int(choose(logits, n_words, Sampling(), None)) == EOS
    assert int(choose(logits, n_words, Sampling(stop=False), None)) == 7  # fixed-length runs


@pytest.mark.parametrize("stop_id,reason", [(EOS, "eos"), (IMG_START, "image")])
def test_generation_stops_at_eos_and_image(stop_id, reason):
    model, vocab, folding = make_model("global_conditional", "pix_table")
    p = prompts(folding, vocab)[2]
    model.head = _ConstantHead(vocab.n_classes, stop_id)  # the stop token is always the argmax
    g = generate(model, [p], vocab, 128, Sampling(max_new_tokens=5))[0]
    assert g.stop == reason and g.tokens == []
    model.head = _ConstantHead(vocab.n_classes, 30)
    g = generate(model, [p], vocab, 128, Sampling(max_new_tokens=5))[0]
    assert g.stop == "max_new_tokens" and g.tokens == [30] * 5


class _ConstantHead(torch.nn.Module):
    """A head whose argmax is always one class."""

    def __init__(self, n_classes: int, favourite: int):
        super().__init__()
        self.n_classes, self.favourite = n_classes, favourite

    def forward(self, h):
        out = h.new_zeros(*h.shape[:-1], self.n_classes)
        out[..., self.favourite] = 1.0
        return out


def test_prompt_longer_than_max_seq_len_is_refused():
    model, vocab, folding = make_model("global_conditional", "pix_table")
    with pytest.raises(GenerateError, match="max_seq_len"):
        generate(model, [[np.arange(6, 30)]], vocab, 10, Sampling(max_new_tokens=2))
