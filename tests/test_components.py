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

from pixword_lit.components.attention import ATTENTIONS, GlobalConditional, Pooled
from pixword_lit.components.embedding import EMBEDDINGS
from pixword_lit.components.folding import (
    FOLDINGS,
    PaletteFolding,
    UniformFolding,
    fit_palette,
    fold_psnr,
    psnr,
)
from pixword_lit.config import ConfigError, load_config
from pixword_lit.image import build_sample, collate, image_windows
from pixword_lit.model import PixWordModel, loss_terms
from pixword_lit.tokens import IGNORE, Vocab

SIZE, WINDOW, N_WORDS = 8, 4, 12
TINY = ["model.dim=16", "model.n_heads=2", "model.n_kv_heads=1", "model.image_layers=1",
        "model.decoder_layers=1", f"model.image_size={SIZE}", f"model.window_size={WINDOW}",
        "model.ffn_multiple_of=16"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny ops on a busy 2-core machine: a second intra-op thread makes each call ~500x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


COMBOS = [c for c in itertools.product(FOLDINGS, ATTENTIONS, EMBEDDINGS) if is_valid(*c)]
UNIFORM_COMBOS = [(a, e) for f, a, e in COMBOS if f == "uniform"]


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
    logits, _ = model(batch)
    assert logits.shape == (*batch["targets"].shape, vocab.n_classes)
    t = loss_terms(logits, batch["targets"], vocab.n_words)
    loss = t["sum"] / t["n"]
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
        ref, _ = model(batch)
        for i in range(2):
            for k in torch.nonzero(batch["elem_valid"][i]).flatten().tolist()[1:]:
                out, _ = model(_perturb_element(batch, i, k, folding))
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


def test_full_causal_pixel_causality_and_per_pixel_loss():
    model, vocab, folding = make_model("uniform", "full_causal", "pix_table")
    model.eval()
    batch = make_batch(folding, vocab)
    with torch.no_grad():
        logits, extras = model(batch)
        pt, pl = extras["pixel_targets"], extras["pixel_logits"]
        # every valid pixel is predicted by the token before it, and nothing else is a pixel target
        assert int((pt != IGNORE).sum()) == int(batch["n_pixels"].sum())
        assert bool(((pt == IGNORE) | (pt >= vocab.n_words)).all())
        # the paper's targets are scored at window summary pixels of the same per-pixel logits
        assert torch.isin(logits[0], pl[0]).all()
        # changing the 10th pixel of window 0 (element 5 of sample 0) changes no earlier token
        b = {k: v.clone() for k, v in batch.items()}
        b["pix"][0, 0, 9] = (b["pix"][0, 0, 9] + 1) % folding.n_pix
        _, ex2 = model(b)
        first = 5 + 9  # tokens <s> 6 7 8 <|image|>, then pixel 0 is token 5: pixel 9 is 14
        assert torch.equal(ex2["pixel_logits"][0, :first], pl[0, :first])
        assert not torch.allclose(ex2["pixel_logits"][0, first], pl[0, first])
    model.train()
    _, extras = model(batch)
    assert "pixel_logits" not in extras  # training scores only the paper's targets


def test_every_variant_scores_the_same_targets():
    """Fairness: for one batch, every attention x embedding variant scores the same target ids
    at the same positions and counts, so their val/loss rows are comparable."""
    seen = {}
    for attn, emb in UNIFORM_COMBOS:
        model, vocab, folding = make_model("uniform", attn, emb)
        batch = make_batch(folding, vocab)
        with torch.no_grad():
            logits, _ = model.eval()(batch)
        t = loss_terms(logits, batch["targets"], vocab.n_words)
        scored = batch["targets"] != IGNORE
        assert torch.isfinite(logits[scored]).all()
        seen[(attn, emb)] = (
            torch.nonzero(scored).tolist(), batch["targets"][scored].tolist(),
            int(t["n"]), int(t["pix_n"]), int(t["word_n"]),
        )
    first = next(iter(seen.values()))
    assert first[2] == first[3] + first[4] > 0 and first[3] > 0 and first[4] > 0
    for key, val in seen.items():
        assert val == first, key


def test_pooled_and_global_conditional_differ_only_in_the_summary(monkeypatch):
    gc, vocab, folding = make_model("uniform", "global_conditional", "pix_table", seed=0)
    pooled, _, _ = make_model("uniform", "pooled", "pix_table", seed=1)
    pooled.load_state_dict(gc.state_dict())  # same parameter names: nothing else differs
    batch = make_batch(folding, vocab)
    with torch.no_grad():
        ref, _ = gc.eval()(batch)
        out, _ = pooled.eval()(batch)
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
        same, _ = pooled(batch)
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
