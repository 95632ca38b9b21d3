"""Every registry entry, tested: forward, backward, causality, fair scoring, config errors.

Parametrized over the registry dicts themselves, so a new entry is tested the moment it
is registered. Models are tiny (dim 16, one layer per stack) so the file runs in seconds.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pixword_lit.data.elements import build_sample, collate, image_windows
from pixword_lit.model.components.attention import ATTENTIONS, GlobalConditional, Pooled
from pixword_lit.model.components.embedding import EMBEDDINGS
from pixword_lit.model.components.folding import (
    FOLDINGS,
    PaletteFolding,
    UniformFolding,
    fit_palette,
    fold_psnr,
    psnr,
)
from pixword_lit.model.pixword import ModelOutput, PixWordModel, loss_terms
from pixword_lit.model.tokens import IGNORE, Vocab
from pixword_lit.system.config import DEBUG_MODEL, ConfigError, load_config

SIZE, WINDOW, N_WORDS = 8, 4, 12
# the folding is named per test (a palette takes no `factor`)
TINY = [*(o for o in DEBUG_MODEL if not o.startswith("model.folding.")),
        f"model.image_size={SIZE}", f"model.window_size={WINDOW}"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def folding_of(name: str):
    if name == "uniform":
        return UniformFolding(64)  # 4 levels, 64 pix tokens
    rng = np.random.default_rng(0)
    return PaletteFolding(fit_palette(rng.integers(0, 256, (500, 3), dtype=np.uint8), 16, 5))


def is_valid(fold: str, attn: str, emb: str) -> bool:
    try:
        load_config(None, TINY + [f"model.folding.name={fold}", f"model.attention.name={attn}",
                                  f"model.embedding.name={emb}"])
        return True
    except ConfigError:
        return False


# Written out from the rules in pixword_lit/model/components/__init__.py, not computed by the code
# under test: factorized needs uniform folding; patch_linear needs global_conditional.
COMBOS = [
    ("uniform", "global_conditional", "pix_table"),
    ("uniform", "global_conditional", "factorized"),
    ("uniform", "global_conditional", "linear_rgb"),
    ("uniform", "global_conditional", "patch_linear"),
    ("uniform", "full_causal", "pix_table"),
    ("uniform", "full_causal", "factorized"),
    ("uniform", "full_causal", "linear_rgb"),
    ("uniform", "pooled", "pix_table"),
    ("uniform", "pooled", "factorized"),
    ("uniform", "pooled", "linear_rgb"),
    ("palette", "global_conditional", "pix_table"),
    ("palette", "global_conditional", "linear_rgb"),
    ("palette", "global_conditional", "patch_linear"),
    ("palette", "full_causal", "pix_table"),
    ("palette", "full_causal", "linear_rgb"),
    ("palette", "pooled", "pix_table"),
    ("palette", "pooled", "linear_rgb"),
]
UNIFORM_COMBOS = [(a, e) for f, a, e in COMBOS if f == "uniform"]


def test_valid_combinations_are_exactly_the_documented_ones():
    """A combination wrongly refused (or wrongly accepted) fails here by name."""
    product = list(itertools.product(FOLDINGS, ATTENTIONS, EMBEDDINGS))
    assert set(COMBOS) <= set(product)  # a registry entry renamed or removed
    for combo in product:
        assert is_valid(*combo) == (combo in COMBOS), combo


def make_model(fold: str, attn: str, emb: str, seed: int = 0):
    cfg = load_config(None, TINY + [f"model.folding.name={fold}", f"model.attention.name={attn}",
                                    f"model.embedding.name={emb}"])
    folding = folding_of(fold)
    vocab = Vocab(N_WORDS, folding.n_pix)
    torch.manual_seed(seed)
    return PixWordModel(cfg.model, vocab, folding), vocab, folding


def make_batch(folding, vocab):
    """Two samples: text + a square image + text, and a landscape image whose bottom windows
    are masked and whose middle windows are partly padded (rows 6-7 of 8 are padding)."""
    rng = np.random.default_rng(1)
    square = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (3, SIZE, 3), dtype=np.uint8)  # 3 valid rows: windows 2, 3 masked
    s1 = build_sample([np.array([6, 7, 8]), image_windows(square, SIZE, WINDOW, folding, vocab),
                       np.array([9, 10])], vocab, 64)
    s2 = build_sample([image_windows(wide, SIZE, WINDOW, folding, vocab), np.array([11])], vocab, 64)
    return collate([s1, s2], vocab.pix_pad, WINDOW * WINDOW)


def test_every_registry_entry_is_in_a_valid_combination():
    for family, registry in (("folding", FOLDINGS), ("attention", ATTENTIONS), ("embedding", EMBEDDINGS)):
        idx = {"folding": 0, "attention": 1, "embedding": 2}[family]
        assert set(registry) == {c[idx] for c in COMBOS}, family


@pytest.mark.parametrize("fold,attn,emb", COMBOS)
def test_forward_backward(fold, attn, emb):
    model, vocab, folding = make_model(fold, attn, emb)
    batch = make_batch(folding, vocab)
    logits = model(batch).logits
    assert logits.shape == (*batch["targets"].shape, vocab.n_classes)
    t = loss_terms(ModelOutput(logits), batch["targets"], vocab.n_words)
    loss = t.sum / t.n
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def _perturb_element(batch, i: int, k: int, folding):
    """A copy of the batch where element k of sample i has other content (same layout)."""
    b = {key: v.clone() if torch.is_tensor(v) else v for key, v in batch.items()}
    slot = int(b["window_slot"][i, k])
    if slot < 0:
        b["input_ids"][i, k] = (b["input_ids"][i, k] + 1) % N_WORDS
    else:
        ok = b["pix_pos"][i, slot] >= 0
        b["pix"][i, slot] = torch.where(ok, (b["pix"][i, slot] + 7) % folding.n_pix, b["pix"][i, slot])
    return b


@pytest.mark.parametrize("fold,attn,emb", COMBOS)
def test_decoder_causality(fold, attn, emb):
    """Changing element k leaves the logits before k unchanged and changes those at k: the
    output that scores element k+1's target has seen element k and nothing after it."""
    model, vocab, folding = make_model(fold, attn, emb)
    model.eval()
    batch = make_batch(folding, vocab)
    with torch.no_grad():
        ref = model(batch).logits
        for i in range(2):
            for k in torch.nonzero(batch["elem_valid"][i]).flatten().tolist()[1:]:
                out = model(_perturb_element(batch, i, k, folding)).logits
                assert torch.equal(out[i, :k], ref[i, :k]), (i, k)
                assert not torch.allclose(out[i, k], ref[i, k]), (i, k)
                assert torch.equal(out[1 - i], ref[1 - i])  # samples do not see each other


@pytest.mark.parametrize("attn", [a for a in ATTENTIONS if a != "full_causal"])
def test_image_block_causality(attn):
    """Inside a window, changing pixel j leaves the image block's states before j unchanged."""
    model, vocab, folding = make_model("uniform", attn, "pix_table")
    pixels = model.pixels
    batch = make_batch(folding, vocab)
    pix, pos = batch["pix"][0], batch["pix_pos"][0]  # (Nw, P)
    with torch.no_grad():
        ref = pixels.block(pixels.embed(pix), pos, pos >= 0)
        for j in (0, 5, WINDOW * WINDOW - 1):
            changed = pix.clone()
            changed[:, j] = (changed[:, j] + 1) % folding.n_pix
            out = pixels.block(pixels.embed(changed), pos, pos >= 0)
            assert torch.equal(out[:, :j], ref[:, :j])
            assert not torch.allclose(out[:, j], ref[:, j])


# make_batch's layout, by hand. Sample 0: <s> 6 7 8 <|image|> W0 W1 W2 W3 <|/image|> 9 10;
# sample 1: <s> <|image|> W0 W1 W2 W3 <|/image|> 11 (W2, W3 masked), then 4 padding slots.
# (sample, element position) -> target class of every scored word target; pix targets are
# the class (V + pix id) of the first pixel of the predicted window k.
SCORED_WORDS = {(0, 0): 6, (0, 1): 7, (0, 2): 8, (0, 3): 4, (0, 8): 5, (0, 9): 9, (0, 10): 10,
                (0, 11): 2, (1, 0): 4, (1, 3): 5, (1, 6): 11, (1, 7): 2}
SCORED_PIX = {(0, 4): 0, (0, 5): 1, (0, 6): 2, (0, 7): 3, (1, 1): 0, (1, 2): 1}  # -> window k
# full_causal: each window element expands to its 16 pixel tokens; the token that scores an
# element's target is the element's own token, or its window's last valid pixel (square
# windows: pixel 15; the wide image's top windows have 3 valid rows: pixel 11).
FULL_CAUSAL_GATHER = {
    0: {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5 + 15, 6: 21 + 15, 7: 37 + 15, 8: 53 + 15, 9: 69,
        10: 70, 11: 71},
    1: {0: 0, 1: 1, 2: 2 + 11, 3: 18 + 11, 6: 66, 7: 67},
}


def _first_pixel_classes(folding):
    """Class of the first (top-left) pixel of each window of make_batch's two images."""
    rng = np.random.default_rng(1)
    square = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (3, SIZE, 3), dtype=np.uint8)
    corners = [(0, 0), (0, 4), (4, 0), (4, 4)]
    return [[N_WORDS + int(folding.fold(img[r : r + 1, c : c + 1])[0, 0]) for r, c in corners[:n]]
            for img, n in ((square, 4), (wide, 2))]


def _expected_targets(folding):
    first = _first_pixel_classes(folding)
    want = dict(SCORED_WORDS)
    want.update({(i, t): first[i][k] for (i, t), k in SCORED_PIX.items()})
    return want


def test_make_batch_targets_are_the_hand_derived_ones():
    folding = folding_of("uniform")
    batch = make_batch(folding, Vocab(N_WORDS, folding.n_pix))
    scored = torch.nonzero(batch["targets"] != IGNORE).tolist()
    assert {(i, t): int(batch["targets"][i, t]) for i, t in scored} == _expected_targets(folding)


def test_full_causal_pixel_causality_and_per_pixel_loss():
    model, vocab, folding = make_model("uniform", "full_causal", "pix_table")
    model.eval()
    batch = make_batch(folding, vocab)
    with torch.no_grad():
        out = model(batch, every_pixel=True)
        logits, pt, pl = out.logits, out.pixel_targets, out.pixel_logits
        # every valid pixel token is predicted by the valid token before it, by hand:
        # sample 0: token 4 (<|image|>) predicts pixel 0 of W0 (token 5); tokens 5..67 predict
        # the next pixel; token 68 (last pixel of W3) predicts <|/image|>, not a pixel.
        want = torch.full_like(pt, IGNORE)
        want[0, 4:68] = N_WORDS + batch["pix"][0, :4].reshape(-1)
        # sample 1: valid pixel tokens are rows 0-2 of W0 (tokens 2..13) and of W1 (18..29);
        # token 1 predicts token 2, token 13 predicts token 18, token 29 predicts <|/image|>
        tokens = list(range(2, 14)) + list(range(18, 30))
        ids = [int(batch["pix"][1, w, k]) for w in (0, 1) for k in range(12)]
        for before, pix_id in zip([1] + tokens[:-1], ids):
            want[1, before] = N_WORDS + pix_id
        assert torch.equal(pt, want)
        assert int((pt != IGNORE).sum()) == int(batch["n_pixels"].sum()) == 64 + 24
        # the paper's targets are scored by the logits at exactly these tokens
        for i, where in FULL_CAUSAL_GATHER.items():
            for t, j in where.items():
                assert torch.equal(logits[i, t], pl[i, j]), (i, t, j)
        # changing the 10th pixel of window 0 (element 5 of sample 0) changes no earlier token
        b = {k: v.clone() for k, v in batch.items()}
        b["pix"][0, 0, 9] = (b["pix"][0, 0, 9] + 1) % folding.n_pix
        ex2 = model(b, every_pixel=True)
        first = 5 + 9  # tokens <s> 6 7 8 <|image|>, then pixel 0 is token 5: pixel 9 is 14
        assert torch.equal(ex2.pixel_logits[0, :first], pl[0, :first])
        assert not torch.allclose(ex2.pixel_logits[0, first], pl[0, first])
    model.train()
    train = model(batch)
    train_logits = train.logits
    assert train.pixel_logits is None  # training scores only the paper's targets
    scored = batch["targets"] != IGNORE
    assert torch.allclose(train_logits[scored], logits[scored], atol=1e-5)  # at the same tokens


def _reference_summaries(model, batch, attn):
    """(B, Nw, dim) window summaries computed apart from the variant's own gather code: the
    image block's state at each window's last valid pixel (found from pix_pos), the mean of
    its valid states (pooled), or the patch embedding (no image block)."""
    out = []
    pixels = model.pixels
    for i in range(batch["pix"].shape[0]):
        pix, pos = batch["pix"][i], batch["pix_pos"][i]
        if pixels.block is None:
            out.append(pixels.embed(pix))
            continue
        h = pixels.block(pixels.embed(pix), pos, pos >= 0)
        rows = []
        for w in range(len(pix)):
            ok = torch.nonzero(pos[w] >= 0).flatten()
            if len(ok) == 0:
                rows.append(torch.zeros_like(h[w, 0]))
            elif attn == "pooled":
                rows.append(h[w, ok].mean(0))
            else:
                rows.append(h[w, int(ok.max())])
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("attn,emb", UNIFORM_COMBOS)
def test_every_variant_scores_the_same_targets(attn, emb):
    """Fairness: every attention x embedding variant scores exactly the hand-derived (position,
    class) pairs, each with the logits of the right decoder token, so val/loss rows compare."""
    model, vocab, folding = make_model("uniform", attn, emb)
    model.eval()
    batch = make_batch(folding, vocab)
    want = _expected_targets(folding)
    with torch.no_grad():
        logits = model(batch).logits
        x_words = model.word_embed(batch["input_ids"])
        inp = model.pixels(batch, x_words)
        x, gather = inp.x, inp.gather
        if attn == "full_causal":
            for i, where in FULL_CAUSAL_GATHER.items():
                for t, j in where.items():
                    assert int(gather[i, t]) == j, (i, t)
        else:
            # one decoder token per element (its own), whose input for a window is its summary
            assert torch.equal(gather, torch.arange(gather.shape[1]).expand_as(gather))
            ref = _reference_summaries(model, batch, attn)
            for i, t in torch.nonzero(batch["window_slot"] >= 0).tolist():
                k = int(batch["window_slot"][i, t])
                if batch["window_valid"][i, k]:
                    assert torch.allclose(x[i, t], ref[i, k], atol=1e-5), (i, t)
    t = loss_terms(ModelOutput(logits), batch["targets"], vocab.n_words)
    logp = torch.log_softmax(logits.float(), -1)
    assert float(t.sum) == pytest.approx(-sum(float(logp[i, p, c]) for (i, p), c in want.items()),
                                            rel=1e-5)
    n_pix = len(SCORED_PIX)
    assert (int(t.n), int(t.pix_n), int(t.word_n)) == (len(want), n_pix, len(want) - n_pix)
    assert float(t.pix_sum) == pytest.approx(
        -sum(float(logp[i, p, want[i, p]]) for (i, p) in SCORED_PIX), rel=1e-5)
    assert float(t.word_sum) == pytest.approx(
        -sum(float(logp[i, p, c]) for (i, p), c in SCORED_WORDS.items()), rel=1e-5)
    correct = sum(int(logits[i, p].argmax()) == want[i, p] for (i, p) in SCORED_PIX)
    assert int(t.pix_correct) == correct


def test_pooled_and_global_conditional_differ_only_in_the_summary(monkeypatch):
    gc, vocab, folding = make_model("uniform", "global_conditional", "pix_table", seed=0)
    pooled, _, _ = make_model("uniform", "pooled", "pix_table", seed=1)
    pooled.load_state_dict(gc.state_dict())  # same parameter names: nothing else differs
    batch = make_batch(folding, vocab)
    with torch.no_grad():
        ref = gc.eval()(batch).logits
        out = pooled.eval()(batch).logits
        assert not torch.allclose(out, ref)
        # the pooled summary is the mean of the window's valid hidden states
        pix, pos = batch["pix"][1], batch["pix_pos"][1]
        h = pooled.pixels.block(pooled.pixels.embed(pix), pos, pos >= 0)
        s = pooled.pixels.summarize(h, batch["summary_index"][1], pos)
        ok = pos >= 0
        for w in range(len(pix)):
            if ok[w].any():
                assert torch.allclose(s[w], h[w][ok[w]].mean(0), atol=1e-6)
        monkeypatch.setattr(Pooled, "summarize", GlobalConditional.summarize)
        same = pooled(batch).logits
    assert torch.equal(same, ref)


@pytest.mark.parametrize("override,key", [
    ("model.folding.name=nope", "model.folding.name"),
    ("model.attention.name=nope", "model.attention.name"),
    ("model.embedding.name=nope", "model.embedding.name"),
    ("model.folding.colors=512", "model.folding.colors"),  # a palette param on uniform
    ("model.folding.factor=3", "model.folding.factor"),
])
def test_unknown_names_and_params_raise_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key) as e:
        load_config(None, TINY + [override])
    if override.endswith("=nope"):  # the message lists the valid names
        family = key.split(".")[1]
        registry = {"folding": FOLDINGS, "attention": ATTENTIONS, "embedding": EMBEDDINGS}[family]
        assert all(name in str(e.value) for name in registry)


@pytest.mark.parametrize("overrides,key", [
    (["model.folding.name=palette", "model.embedding.name=factorized"], "model.embedding.name"),
    (["model.attention.name=full_causal", "model.embedding.name=patch_linear"], "model.attention.name"),
    (["model.attention.name=pooled", "model.embedding.name=patch_linear"], "model.attention.name"),
    (["model.attention.name=full_causal", "model.image_size=224", "model.window_size=16"],
     "model.attention.max_pixels"),
])
def test_invalid_combinations_raise_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, TINY + overrides)


def test_uniform_psnr_by_hand():
    # every 8-bit value once per channel: the error v - (v//16*16 + 8) runs over -8..7
    v = np.arange(256, dtype=np.uint8)
    img = np.stack([v, v, v], -1).reshape(16, 16, 3)
    mse = sum(k * k for k in range(-8, 8)) / 16  # 21.5
    assert fold_psnr(UniformFolding(16), img) == pytest.approx(10 * math.log10(255**2 / mse))
    assert fold_psnr(UniformFolding(16), img) == pytest.approx(34.8064, abs=1e-4)
    assert fold_psnr(UniformFolding(2), img) == pytest.approx(10 * math.log10(255**2 / 0.5))
    # image_windows accumulates the same squared error (it feeds val/fold_psnr)
    f = UniformFolding(16)
    w = image_windows(img, 16, 4, f, Vocab(6, f.n_pix))
    assert psnr(w.fold_se / (w.n_pixels * 3)) == pytest.approx(fold_psnr(f, img))


def test_palette_fit_fold_round_trip():
    colors = np.array([[0, 0, 0], [255, 0, 0], [10, 200, 30], [255, 255, 255]], np.uint8)
    rng = np.random.default_rng(0)
    pixels = colors[rng.integers(0, 4, 3000)]
    pal = fit_palette(pixels, 4, iters=10)
    assert sorted(map(tuple, pal.tolist())) == sorted(map(tuple, colors.tolist()))
    f = PaletteFolding(pal)
    assert f.n_pix == 4 and f.state()["palette"] == pal.tolist()
    ids = f.fold(pixels.reshape(60, 50, 3))
    assert ids.shape == (60, 50) and np.array_equal(f.unfold(ids).reshape(-1, 3), pixels)
    assert fold_psnr(f, pixels.reshape(60, 50, 3)) == float("inf")
    # nearest-color assignment against a brute-force reference, on noisy pixels
    noisy = np.clip(pixels.astype(int) + rng.integers(-40, 40, pixels.shape), 0, 255).astype(np.uint8)
    brute = ((noisy[:, None].astype(int) - pal[None].astype(int)) ** 2).sum(-1).argmin(1)
    assert np.array_equal(f.fold(noisy), brute)
    # at equal vocabulary (64), a palette fitted to data of few colors beats uniform folding
    base = rng.integers(0, 256, (6, 3))
    px = np.clip(base[rng.integers(0, 6, 4000)] + rng.normal(0, 6, (4000, 3)), 0, 255)
    img = px.astype(np.uint8)[:1600].reshape(40, 40, 3)
    pal64 = PaletteFolding(fit_palette(px.astype(np.uint8), 64, iters=10))
    assert fold_psnr(pal64, img) > fold_psnr(UniformFolding(64), img) + 10  # ~38 vs ~22 dB
