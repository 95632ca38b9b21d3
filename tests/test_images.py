"""Image sampling and completion: cached == uncached, log-probability == teacher-forced NLL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixword_lit.data.elements import build_sample, collate, image_windows
from pixword_lit.infer.generate import GenerateError, Sampling
from pixword_lit.infer.images import blank, generate_images, generate_images_uncached, kept_windows, to_rgb
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.pixword import PixWordModel, loss_terms
from pixword_lit.model.tokens import Vocab
from pixword_lit.system.config import DEBUG_MODEL, load_config

SIZE, WINDOW, N_WORDS = 8, 4, 12
TINY = [*DEBUG_MODEL, f"model.image_size={SIZE}", f"model.window_size={WINDOW}",
        "model.folding.factor=128"]  # 8 colors: fast, varied draws
DENSE = [("global_conditional", "pix_table"), ("pooled", "linear_rgb"), ("full_causal", "pix_table")]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def make(attn: str, emb: str, objective: str = "dense"):
    cfg = load_config(None, TINY + [f"model.attention.name={attn}", f"model.embedding.name={emb}",
                                    f"model.objective.name={objective}"])
    folding = UniformFolding(128)
    vocab = Vocab(N_WORDS, folding.n_pix)
    torch.manual_seed(0)
    model = PixWordModel(cfg.model, vocab, folding).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init: draws that differ
        for head in [model.head] + ([model.local.head] if model.local is not None else []):
            head.weight.mul_(30)
    return model, vocab, folding


def wide(folding, vocab):
    """3 x 6 px: windows 2, 3 masked, windows 0, 1 partly padded."""
    rgb = np.random.default_rng(5).integers(0, 256, (3, 6, 3), dtype=np.uint8)
    return image_windows(rgb, SIZE, WINDOW, folding, vocab)


@pytest.mark.parametrize("attn,emb", DENSE)
def test_cached_sampling_equals_uncached_loop(attn, emb):
    model, vocab, folding = make(attn, emb)
    earlier = image_windows(np.full((SIZE, SIZE, 3), 200, np.uint8), SIZE, WINDOW, folding, vocab)
    prompt = [np.array([6, 7]), earlier, np.array([8])]  # an earlier image shifts every target
    for template in (wide(folding, vocab), blank(SIZE, WINDOW, vocab.pix_pad)):
        s = Sampling(temperature=1.0, top_k=6, seed=11)
        (cached,) = generate_images(model, prompt, template, vocab, 1, s)
        ref = generate_images_uncached(model, prompt, template, vocab, s)
        assert np.array_equal(cached.pix, ref.pix)
        assert cached.sampled == ref.sampled == int((template.pos >= 0).sum())
        assert cached.logprob == pytest.approx(ref.logprob, rel=1e-6)
        assert np.all(cached.pix[template.pos < 0] == vocab.pix_pad)  # pad stays pad


@pytest.mark.parametrize("attn,emb", DENSE)
def test_logprob_of_a_sample_is_the_teacher_forced_nll(attn, emb):
    model, vocab, folding = make(attn, emb)
    template = wide(folding, vocab)
    prompt = [np.array([6, 7, 8])]
    (smp,) = generate_images(model, prompt, template, vocab, 1, Sampling(temperature=1.0, seed=2))
    img = image_windows(np.zeros((3, 6, 3), np.uint8), SIZE, WINDOW, folding, vocab)
    img.pix = smp.pix
    batch = collate([build_sample([*prompt, img], vocab, 256)], vocab.pix_pad, WINDOW * WINDOW)
    with torch.no_grad():
        out = model(batch, every_pixel=True)
    t = loss_terms(out, batch["targets"], N_WORDS, dense=True)
    assert int(t.pixel_all_n) == smp.sampled
    assert float(t.pixel_all_sum) == pytest.approx(-smp.logprob, rel=1e-5)


def test_completion_keeps_whole_window_rows_and_samples_the_rest():
    model, vocab, folding = make("global_conditional", "pix_table")
    rgb = np.random.default_rng(9).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    truth = image_windows(rgb, SIZE, WINDOW, folding, vocab)
    keep = kept_windows(SIZE, WINDOW, 3)  # 3 pixel rows -> the first window row (4 rows)
    assert keep.tolist() == [True, True, False, False]
    s = Sampling(temperature=1.0, seed=4)
    samples = generate_images(model, [], truth, vocab, 3, s, keep)
    for smp in samples:
        assert np.array_equal(smp.pix[:2], truth.pix[:2])
        assert smp.sampled == 2 * WINDOW * WINDOW
    assert not np.array_equal(samples[0].pix[2:], samples[1].pix[2:])  # different draws
    again = generate_images(model, [], truth, vocab, 3, s, keep)
    assert all(np.array_equal(a.pix, b.pix) for a, b in zip(samples, again))  # the seed decides
    ref = generate_images_uncached(model, [], truth, vocab, s, keep)
    (one,) = generate_images(model, [], truth, vocab, 1, s, keep)
    assert np.array_equal(one.pix, ref.pix)
    rgb_out = to_rgb(one.pix, folding, SIZE, WINDOW)
    assert rgb_out.shape == (SIZE, SIZE, 3) and rgb_out.dtype == np.uint8


def test_first_pixel_models_cannot_sample_images():
    model, vocab, folding = make("global_conditional", "pix_table", "first_pixel")
    with pytest.raises(GenerateError, match="first_pixel"):
        generate_images(model, [], blank(SIZE, WINDOW, vocab.pix_pad), vocab, 1, Sampling())
