"""Exact, hand-derived checks of the modules where a silent error corrupts results:
data/elements.py (what the model sees, the `authors` short-side rounding included), tokens.py,
components/folding.py (`folding_from_state` included) and model.loss_terms (its first-pixel,
dense and full_causal branches and pix_weight). Pure numpy and small tensors, so `make
mutation` can run them for every mutant in well under a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pixword_lit.data.elements import (
    RESAMPLE,
    SkipImage,
    Windows,
    build_sample,
    collate,
    empty_sample,
    image_windows,
    resize_longer_side,
)
from pixword_lit.errors import ConfigError
from pixword_lit.model.components.folding import (
    FOLDINGS,
    PaletteFolding,
    UniformFolding,
    fit_palette,
    fold_psnr,
    folding_from_state,
    nearest,
    psnr,
)
from pixword_lit.model.pixword import ModelOutput, loss_terms
from pixword_lit.model.tokens import (
    BOS,
    EOS,
    IGNORE,
    IMG_END,
    IMG_START,
    PAD,
    SPECIAL_TOKENS,
    Vocab,
    special_tokens_problem,
)

IG = IGNORE


# ---- tokens ---------------------------------------------------------------------------------
def test_vocab_layout():
    v = Vocab(10, 64)
    assert (v.pix_pad, v.n_classes, v.pix_class(0), v.pix_class(63)) == (64, 74, 10, 73)
    assert np.array_equal(v.pix_class(np.array([1, 2])), [11, 12])
    assert [v.word_name(i) for i in range(7)] == [*SPECIAL_TOKENS, "w6"]
    assert SPECIAL_TOKENS == ["<unk>", "<s>", "</s>", "<pad>", "<|image|>", "<|/image|>"]
    assert (BOS, EOS, PAD, IMG_START, IMG_END, IGNORE) == (1, 2, 3, 4, 5, -100)


class _Tokenizer:
    """What special_tokens_problem reads of a `tokenizers.Tokenizer`: token_to_id (None when absent)."""

    def __init__(self, ids: dict):
        self.ids = ids

    def token_to_id(self, token):
        return self.ids.get(token)


def test_special_tokens_problem_by_hand():
    good = dict(zip(SPECIAL_TOKENS, range(6)))
    assert special_tokens_problem(_Tokenizer(good)) is None
    assert special_tokens_problem(_Tokenizer({**good, "w": 6})) is None  # words after them: fine
    swapped = {**good, "<s>": 2, "</s>": 1}
    assert special_tokens_problem(_Tokenizer(swapped)) == (
        "does not have the special tokens <unk> <s> </s> <pad> <|image|> <|/image|> at ids 0-5 "
        "(found <unk>=0, <s>=2, </s>=1, <pad>=3, <|image|>=4, <|/image|>=5)")
    no_image = {t: i for t, i in good.items() if "image" not in t}
    assert special_tokens_problem(_Tokenizer(no_image)).endswith(
        "(found <unk>=0, <s>=1, </s>=2, <pad>=3, <|image|>=None, <|/image|>=None)")
    shifted = {t: i + 1 for t, i in good.items()}  # the right order one id up
    assert "(found <unk>=1, <s>=2, </s>=3, <pad>=4, <|image|>=5, <|/image|>=6)" in (
        special_tokens_problem(_Tokenizer(shifted)))


# ---- folding --------------------------------------------------------------------------------
def test_uniform_folding_by_hand():
    f = UniformFolding(64)  # 4 levels per channel
    assert (f.factor, f.levels, f.n_pix) == (64, 4, 64)
    rgb = np.array([[0, 0, 0], [63, 64, 255], [255, 0, 128], [130, 200, 10]], np.uint8)
    # t = r' + 4 g' + 16 b'
    assert f.fold(rgb).tolist() == [0, 0 + 4 * 1 + 16 * 3, 3 + 0 + 16 * 2, 2 + 4 * 3 + 0]
    assert f.fold(rgb).dtype == np.int64
    assert f.channel_levels()[[0, 1, 4, 16, 63]].tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0],
                                                              [0, 0, 1], [3, 3, 3]]
    assert f.colors()[[0, 63, 1 + 4 * 2]].tolist() == [[32, 32, 32], [224, 224, 224], [96, 160, 32]]
    assert f.colors().dtype == np.uint8
    assert f.unfold(np.array([[0, 63]])).tolist() == [[[32, 32, 32], [224, 224, 224]]]
    assert f.state() == {"name": "uniform", "factor": 64}
    assert UniformFolding().factor == 16 and UniformFolding().n_pix == 4096
    one = UniformFolding(1)  # no folding: every 8-bit color its own token (no colors() table here)
    assert (one.levels, one.n_pix) == (256, 256**3)
    assert one.fold(np.array([[255, 255, 255], [1, 2, 3]], np.uint8)).tolist() == [256**3 - 1,
                                                                                    1 + 2 * 256 + 3 * 65536]
    assert UniformFolding(128).colors().tolist()[:2] == [[64, 64, 64], [192, 64, 64]]


def test_nearest_by_brute_force_across_chunks():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (53, 3)).astype(np.uint8)
    centers = rng.integers(0, 256, (9, 3)).astype(np.float32)
    brute = ((x[:, None].astype(float) - centers[None]) ** 2).sum(-1).argmin(1)
    assert nearest(x, centers).tolist() == brute.tolist()
    assert nearest(x, centers, chunk=7).tolist() == brute.tolist()  # 8 chunks, the last short
    assert nearest(x, centers, (centers**2).sum(-1), chunk=1).tolist() == brute.tolist()


def test_palette_folding_by_hand():
    pal = np.array([[0, 0, 0], [250, 0, 0], [0, 0, 250], [255, 255, 255]], np.uint8)
    f = PaletteFolding(pal)
    rgb = np.array([[[10, 10, 10], [200, 30, 20]], [[20, 10, 140], [200, 210, 220]]], np.uint8)
    assert f.fold(rgb).tolist() == [[0, 1], [2, 3]]
    assert f.n_pix == 4 and f.colors() is f.palette and f.colors().dtype == np.uint8
    assert f.unfold(np.array([3, 1])).tolist() == [[255, 255, 255], [250, 0, 0]]
    assert f.state() == {"name": "palette", "palette": pal.tolist()}


def test_folding_from_state_rebuilds_each_folding():
    """What checkpoints keep (`state()`) rebuilds the same folding, by name."""
    assert set(FOLDINGS) == {"uniform", "palette"}
    assert FOLDINGS["uniform"] is UniformFolding and FOLDINGS["palette"] is PaletteFolding
    u = folding_from_state({"name": "uniform", "factor": 64})
    assert type(u) is UniformFolding and (u.factor, u.levels, u.n_pix) == (64, 4, 64)
    assert UniformFolding.from_state({"name": "uniform", "factor": 128}).factor == 128
    pal = [[0, 0, 0], [250, 0, 0], [0, 0, 250]]
    p = folding_from_state({"name": "palette", "palette": pal})
    assert type(p) is PaletteFolding and p.palette.tolist() == pal and p.n_pix == 3
    assert PaletteFolding.from_state({"palette": pal[:2]}).palette.tolist() == pal[:2]
    for f in (UniformFolding(16), PaletteFolding(pal)):  # state() -> from_state: the same tokens
        g = folding_from_state(f.state())
        rgb = np.array([[240, 10, 5], [3, 3, 200], [90, 90, 90]], np.uint8)
        assert g.state() == f.state() and g.fold(rgb).tolist() == f.fold(rgb).tolist()
    with pytest.raises(ConfigError) as e:
        folding_from_state({"name": "median_cut", "factor": 16})
    assert str(e.value) == "model.folding.name: unknown folding 'median_cut'"


def test_fit_palette_recovers_clusters_sorted():
    colors = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [10, 10, 10], [200, 200, 200]])
    rng = np.random.default_rng(0)
    pix = np.clip(colors[rng.integers(0, 5, 2000)] + rng.integers(-3, 4, (2000, 3)), 0, 255)
    pal = fit_palette(pix.astype(np.uint8), 5, iters=8)
    assert pal.dtype == np.uint8 and pal.shape == (5, 3)
    assert pal.tolist() == sorted(colors.tolist())  # rows sorted by (r, g, b); centres exact
    assert fit_palette(pix.astype(np.uint8), 5, iters=8, seed=1).tolist() == pal.tolist()
    # more colors than distinct pixels: duplicates keep their centre (no NaN from empty clusters)
    two = np.array([[0, 0, 0]] * 10 + [[255, 255, 255]] * 10, np.uint8)
    pal3 = fit_palette(two, 3, iters=3)
    assert {tuple(c) for c in pal3.tolist()} == {(0, 0, 0), (255, 255, 255)}
    with pytest.raises(ValueError, match="palette of 4 colors needs at least 4 sample pixels, got 3"):
        fit_palette(two[:3], 4)


def test_fit_palette_is_a_function_of_its_seed():
    import inspect

    from pixword_lit.model.components.folding import PaletteParams

    x = np.random.default_rng(5).integers(0, 256, (300, 3)).astype(np.uint8)
    init = [fit_palette(x, 8, iters=0, seed=s).tolist() for s in (0, 0, 1)]  # k-means++ only
    assert init[0] == init[1] and init[0] != init[2]
    assert fit_palette(x, 8, iters=0).tolist() == init[0]  # seed 0 by default
    defaults = inspect.signature(fit_palette).parameters
    assert defaults["iters"].default == PaletteParams().iters == 25


def test_fit_palette_edges():
    # exactly k pixels is enough, and k-means++ picks every distinct one (never a duplicate)
    four = np.array([[9, 9, 9], [0, 0, 0], [0, 0, 1], [200, 0, 0]], np.uint8)
    assert fit_palette(four, 4, iters=0).tolist() == sorted(four.tolist())
    near = np.array([[0, 0, 0]] * 5 + [[0, 0, 1]], np.uint8)  # squared distances sum to 1
    for seed in range(8):
        assert fit_palette(near, 2, iters=0, seed=seed).tolist() == [[0, 0, 0], [0, 0, 1]]


def test_palette_from_a_checkpoint_list():
    """Checkpoints and palette.json hold the palette as lists: folding is the same."""
    pal = [[0, 0, 0], [250, 0, 0], [0, 0, 250], [255, 255, 255]]
    f = PaletteFolding(pal)
    assert f.palette.dtype == np.uint8 and f.colors().dtype == np.uint8
    assert f.unfold(np.array([1])).dtype == np.uint8
    assert f.fold(np.array([[240, 10, 5]], np.uint8)).tolist() == [1]


def test_fit_palette_rounds_and_uses_lloyd_steps():
    # one cluster of 0 and 3 -> mean 1.5 -> rint 2; a second far away at 250
    pix = np.array([[0, 0, 0], [3, 3, 3], [250, 250, 250], [250, 250, 250]], np.uint8)
    assert fit_palette(pix, 2, iters=2).tolist() == [[2, 2, 2], [250, 250, 250]]
    # with no Lloyd step the centres are sampled pixels, not means
    assert fit_palette(pix, 2, iters=0).tolist()[1] == [250, 250, 250]
    assert fit_palette(pix, 2, iters=0).tolist()[0] in ([0, 0, 0], [3, 3, 3])


def test_fit_palette_moves_a_centre_left_with_one_pixel():
    """Greys 0, 30, 40, k = 2, seed 1: k-means++ starts at 30 and 40 (iters=0 below). Step 1:
    {0, 30} -> 15, {40} -> 40; step 2: 30 is nearer 40 (10) than 15 (15), so {0} -> 0 and
    {30, 40} -> 35; step 3 moves nothing. A cluster left with one pixel moves onto it."""
    pix = np.repeat(np.array([[0], [30], [40]], np.uint8), 3, 1)
    assert fit_palette(pix, 2, iters=0, seed=1).tolist() == [[30] * 3, [40] * 3]
    assert fit_palette(pix, 2, iters=1, seed=1).tolist() == [[15] * 3, [40] * 3]
    assert fit_palette(pix, 2, iters=2, seed=1).tolist() == [[0] * 3, [35] * 3]
    assert fit_palette(pix, 2, seed=1).tolist() == [[0] * 3, [35] * 3]


def test_psnr_by_hand():
    assert psnr(0.0) == float("inf") and psnr(-1.0) == float("inf")
    assert psnr(255.0**2) == pytest.approx(0.0, abs=1e-12)
    assert psnr(255.0**2 / 100) == pytest.approx(20.0)
    assert isinstance(psnr(3.0), float)
    img = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    # fold 128: 0 -> 64 (error 64), 255 -> 192 (error 63), on 3 channels each
    assert fold_psnr(UniformFolding(128), img) == pytest.approx(10 * math.log10(255**2 / 4032.5))


# ---- image ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RESAMPLE))
def test_resize_uses_the_named_filter(name):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (7, 11, 3), dtype=np.uint8))
    want = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "bilinear_antialias": Image.BILINEAR,  # PIL bilinear is antialiased (image.py)
            "lanczos": Image.LANCZOS, "box": Image.BOX}[name]
    got = resize_longer_side(img, 16, "upscale", name)
    assert got.size == (16, 10)  # int(16 * 7 / 11)
    assert np.array_equal(np.asarray(got), np.asarray(img.resize((16, 10), want)))


def test_resize_edges():
    same = Image.new("RGB", (16, 9))
    assert resize_longer_side(same, 16, "skip", "box") is same  # longer side already S: kept
    assert resize_longer_side(Image.new("RGB", (32, 1)), 16, "upscale", "box").size == (16, 1)
    assert resize_longer_side(Image.new("RGB", (1, 64)), 16, "upscale", "box").size == (1, 16)
    assert resize_longer_side(Image.new("RGB", (10, 10)), 16, "upscale", "box").size == (16, 16)
    assert resize_longer_side(Image.new("RGB", (40, 20)), 16, "skip", "box").size == (16, 8)
    with pytest.raises(SkipImage, match="5x3 is smaller than image_size 16"):
        resize_longer_side(Image.new("RGB", (5, 3)), 16, "skip", "box")
    with pytest.raises(SkipImage):
        resize_longer_side(Image.new("RGB", (15, 15)), 16, "skip", "box")


def test_resize_authors_rounding_by_hand():
    """data.short_side_rounding: 61/112 is stored just below 0.544642857..., so the authors'
    int((short / long) * S) gives int(121.99999999999999) = 121 at S = 224, where the default
    int(S * short / long) = int(13664 / 112) = 122 exactly; both sides of a portrait image too."""
    img = Image.new("RGB", (112, 61))
    assert resize_longer_side(img, 224, "upscale", "box").size == (224, 122)
    assert resize_longer_side(img, 224, "upscale", "box", "floor").size == (224, 122)
    assert resize_longer_side(img, 224, "upscale", "box", "authors").size == (224, 121)
    portrait = Image.new("RGB", (61, 112))
    assert resize_longer_side(portrait, 224, "upscale", "box", "authors").size == (121, 224)
    # where the two agree: 30/100 * 16 = 4.8 either way -> 4; a side of 0 is kept at 1 px
    assert resize_longer_side(Image.new("RGB", (100, 30)), 16, "upscale", "box", "authors").size == (16, 4)
    assert resize_longer_side(Image.new("RGB", (40, 1)), 16, "upscale", "box", "authors").size == (16, 1)
    # an image already S on its longer side is returned as is under either rounding
    same = Image.new("RGB", (224, 121))
    assert resize_longer_side(same, 224, "skip", "box", "authors") is same


def _windows(h, w, fold=None, size=4, window=2):
    fold = fold or UniformFolding(128)
    rgb = (np.arange(h * w * 3).reshape(h, w, 3) * 37 % 256).astype(np.uint8)
    return rgb, image_windows(rgb, size, window, fold, Vocab(6, fold.n_pix))


def test_image_windows_by_hand():
    # a 3 x 4 image in a 4 x 4 canvas, 2 x 2 windows: the bottom row is padding
    fold = UniformFolding(128)
    rgb, win = _windows(3, 4, fold)
    ids = fold.fold(rgb)
    pad = 8
    assert win.pix.tolist() == [
        [ids[0, 0], ids[0, 1], ids[1, 0], ids[1, 1]], [ids[0, 2], ids[0, 3], ids[1, 2], ids[1, 3]],
        [ids[2, 0], ids[2, 1], pad, pad], [ids[2, 2], ids[2, 3], pad, pad]]
    assert win.pos.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, -1, -1], [10, 11, -1, -1]]
    assert win.summary_index.tolist() == [3, 3, 1, 1]
    assert win.valid.tolist() == [True] * 4 and win.n_pixels == 12
    err = fold.colors()[ids].astype(float) - rgb
    assert win.fold_se == pytest.approx(float((err**2).sum()))
    assert win.pix.dtype == np.int64 and win.pos.dtype == np.int64
    # a 4 x 1 image: the right windows are all padding (masked), summary index still set
    _, tall = _windows(4, 1)
    assert tall.valid.tolist() == [True, False, True, False]
    assert tall.pos.tolist() == [[0, -1, 1, -1], [-1] * 4, [2, -1, 3, -1], [-1] * 4]
    assert tall.summary_index.tolist()[0::2] == [2, 2] and tall.n_pixels == 4


def _win(k_valid, fold_se=1.5, n=3, p=4):
    """A Windows of n windows, the first k_valid valid, pixels 10*w + j."""
    pix = np.arange(n * p).reshape(n, p) + 10
    valid = np.arange(n) < k_valid
    pos = np.where(valid[:, None], np.arange(n * p).reshape(n, p), -1)
    return Windows(pix, pos, np.full(n, p - 1), valid, fold_se, 7)


def test_build_sample_layout_by_hand():
    v = Vocab(20, 50)  # pix class = 20 + id
    a, b = _win(3), _win(2, fold_se=2.0)
    s = build_sample([np.array([6, 7]), a, np.array([8]), b], v, 64)
    assert s["input_ids"].tolist() == [BOS, 6, 7, IMG_START, 0, 0, 0, IMG_END, 8, IMG_START, 0, 0, 0, IMG_END]
    assert s["window_slot"].tolist() == [-1, -1, -1, -1, 0, 1, 2, -1, -1, -1, 3, 4, 5, -1]
    assert s["elem_valid"].tolist() == [True] * 12 + [False, True]
    assert s["positions"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -1, 12]
    # each input predicts the next valid element; window k's class is its first pixel's
    assert s["targets"].tolist() == [6, 7, IMG_START, 30, 34, 38, IMG_END, 8, IMG_START, 30, 34,
                                     IMG_END, IG, EOS]
    assert s["pix"].tolist() == a.pix.tolist() + b.pix.tolist()
    assert s["pix_pos"].tolist() == a.pos.tolist() + b.pos.tolist()
    assert s["summary_index"].tolist() == [3] * 6
    assert s["window_valid"].tolist() == [True, True, True, True, True, False]
    assert s["fold_se"] == 3.5 and s["n_pixels"] == 14 and s["truncated"] is False
    for k in ("input_ids", "window_slot", "positions", "targets", "pix", "pix_pos", "summary_index"):
        assert s[k].dtype == np.int64, k
    assert s["elem_valid"].dtype == bool and s["window_valid"].dtype == bool


def test_build_sample_without_elements_and_text_only():
    v = Vocab(20, 50)
    s = build_sample([], v, 8)
    assert s["input_ids"].tolist() == [BOS] and s["targets"].tolist() == [EOS]
    assert s["positions"].tolist() == [0] and s["window_slot"].tolist() == [-1]
    assert s["pix"].shape == (0, 0) and s["pix_pos"].shape == (0, 0)
    assert s["summary_index"].shape == (0,) and s["window_valid"].shape == (0,)
    assert s["window_valid"].dtype == bool and s["pix"].dtype == np.int64
    assert (s["fold_se"], s["n_pixels"], s["truncated"]) == (0, 0, False)
    t = build_sample([np.array([9, 10, 11])], v, 8)
    assert t["input_ids"].tolist() == [BOS, 9, 10, 11] and t["targets"].tolist() == [9, 10, 11, EOS]


def test_build_sample_truncation_at_element_boundaries():
    v = Vocab(20, 50)
    img = _win(3)  # 3 windows: 5 elements with <|image|> and <|/image|>
    # room for exactly <s> + image + </s>: 1 + 5 inputs = 6 = max_seq_len
    s = build_sample([img], v, 6)
    assert len(s["input_ids"]) == 6 and s["truncated"] is False and s["n_pixels"] == 7
    # one less: the image is dropped whole, nothing after it is kept
    s = build_sample([img, np.array([9])], v, 5)
    assert s["input_ids"].tolist() == [BOS] and s["truncated"] is True
    assert s["targets"].tolist() == [EOS] and s["n_pixels"] == 0 and len(s["pix"]) == 0
    # text is cut to the room left and ends the sample
    s = build_sample([np.array([6, 7, 8, 9, 10]), img], v, 4)
    assert s["input_ids"].tolist() == [BOS, 6, 7, 8] and s["targets"].tolist() == [6, 7, 8, EOS]
    assert s["truncated"] is True and len(s["window_valid"]) == 0
    # text that fits exactly is not truncated, and what follows is still considered
    s = build_sample([np.array([6, 7]), np.array([8])], v, 4)
    assert s["input_ids"].tolist() == [BOS, 6, 7, 8] and s["truncated"] is False
    s = build_sample([np.array([6, 7]), np.array([8, 9])], v, 4)
    assert s["input_ids"].tolist() == [BOS, 6, 7, 8] and s["truncated"] is True
    # no room at all: an empty cut
    s = build_sample([np.array([6]), np.array([7])], v, 2)
    assert s["input_ids"].tolist() == [BOS, 6] and s["truncated"] is True


def test_build_sample_masked_last_window_predicts_image_end():
    v = Vocab(20, 50)
    s = build_sample([_win(1)], v, 16)
    # <s> <|image|> W0 W1(masked) W2(masked) <|/image|>: W0 predicts <|/image|>
    assert s["targets"].tolist() == [IMG_START, 30, IMG_END, IG, IG, EOS]
    assert s["positions"].tolist() == [0, 1, 2, -1, -1, 3]


def test_placeholder_is_shaped_like_a_sample_without_images():
    """Placeholders travel in the same batches as real samples: same keys, same dtypes."""
    e, real = empty_sample(), build_sample([], Vocab(20, 50), 8)
    assert set(e) == set(real)
    arrays = [k for k in real if isinstance(real[k], np.ndarray)]
    assert len(arrays) == 9
    for k in arrays:
        assert e[k].dtype == real[k].dtype and e[k].shape == real[k].shape, k


def test_empty_sample_and_collate_padding():
    v = Vocab(20, 50)
    e = empty_sample()
    assert e["input_ids"].tolist() == [BOS] and e["targets"].tolist() == [IG]
    assert e["elem_valid"].tolist() == [False] and e["positions"].tolist() == [-1]
    assert e["window_slot"].tolist() == [-1]
    assert e["pix"].shape == (0, 0) and e["summary_index"].shape == (0,)
    assert (e["fold_se"], e["n_pixels"], e["truncated"]) == (0.0, 0, False)
    real = build_sample([np.array([6]), _win(2, n=2)], v, 16)
    text = build_sample([np.array([6, 7])], v, 16)
    b = collate([real, e, text], v.pix_pad, 4)
    t = len(real["input_ids"])
    assert b["input_ids"].shape == (3, t) and b["pix"].shape == (3, 2, 4)
    assert b["input_ids"][1].tolist() == [BOS] + [PAD] * (t - 1)
    assert b["input_ids"][2].tolist() == [BOS, 6, 7] + [PAD] * (t - 3)
    assert b["window_slot"][1].tolist() == [-1] * t and b["positions"][1].tolist() == [-1] * t
    assert b["targets"][1].tolist() == [IG] * t and not b["elem_valid"][1].any()
    assert b["targets"][2].tolist() == [6, 7, EOS] + [IG] * (t - 3)
    assert b["elem_valid"][2].tolist() == [True] * 3 + [False] * (t - 3)
    assert b["pix"][0].tolist() == real["pix"].tolist()
    assert b["pix"][1].tolist() == [[50] * 4] * 2 and b["pix_pos"][1].tolist() == [[-1] * 4] * 2
    assert b["pix_pos"][0].tolist() == real["pix_pos"].tolist()
    assert b["summary_index"].tolist() == [[3, 3], [0, 0], [0, 0]]
    assert b["window_valid"].tolist() == [[True, True], [False, False], [False, False]]
    assert b["fold_se"].dtype == torch.float64 and b["fold_se"].tolist() == [1.5, 0.0, 0.0]
    assert b["n_pixels"].dtype == torch.int64 and b["n_pixels"].tolist() == [7, 0, 0]
    assert b["truncated"].dtype == torch.bool and b["truncated"].tolist() == [False] * 3
    for k in ("input_ids", "window_slot", "positions", "targets", "pix", "pix_pos", "summary_index"):
        assert b[k].dtype == torch.int64, k
    # a batch without any image still has one (padding) window slot
    only_text = collate([text], v.pix_pad, 4)
    assert only_text["pix"].shape == (1, 1, 4) and only_text["pix"].tolist() == [[[50] * 4]]


# ---- loss_terms -----------------------------------------------------------------------------
def test_loss_terms_by_hand():
    n_words = 3  # classes 0-2 words, 3-5 pix
    logits = torch.tensor([[[2.0, 0.0, 0.0, 0.0, 0.0, 0.0],    # target 0 (word), argmax 0
                            [0.0, 0.0, 0.0, 1.0, 3.0, 0.0],    # target 4 (pix), argmax 4: correct
                            [0.0, 0.0, 0.0, 0.0, 0.0, 5.0],    # target 3 (pix), argmax 5: wrong
                            [9.0, 9.0, 9.0, 9.0, 9.0, 9.0]]])  # IGNORE
    targets = torch.tensor([[0, 4, 3, IGNORE]])
    logp = torch.log_softmax(logits.double(), -1)[0]
    ce = [-float(logp[0, 0]), -float(logp[1, 4]), -float(logp[2, 3])]
    t = loss_terms(ModelOutput(logits), targets, n_words)
    assert float(t.sum) == pytest.approx(sum(ce), rel=1e-6)
    assert float(t.pix_sum) == pytest.approx(ce[1] + ce[2], rel=1e-6)
    assert float(t.word_sum) == pytest.approx(ce[0], rel=1e-6)
    assert [int(getattr(t, k)) for k in ("n", "pix_n", "word_n", "pix_correct")] == [3, 2, 1, 1]
    # a correct word prediction does not count as a pix hit; a class-3 boundary target does
    t2 = loss_terms(ModelOutput(logits[:, :1]), torch.tensor([[0]]), n_words)
    assert int(t2.pix_correct) == 0 and int(t2.word_n) == 1 and int(t2.pix_n) == 0
    edge = torch.zeros(1, 2, 6)
    edge[0, 0, 3] = edge[0, 1, 2] = 5.0
    t3 = loss_terms(ModelOutput(edge), torch.tensor([[3, 2]]), n_words)  # 3 is the first pix class
    assert [int(getattr(t3, k)) for k in ("pix_n", "word_n", "pix_correct")] == [1, 1, 1]


def test_loss_terms_computes_in_float32_from_bf16_logits():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 40, generator=g) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 40, (2, 5), generator=g)
    want = torch.nn.functional.cross_entropy(logits.double().reshape(-1, 40), targets.reshape(-1),
                                             reduction="sum")
    t = loss_terms(ModelOutput(logits), targets, 20)
    assert t.sum.dtype == torch.float32
    assert float(t.sum) == pytest.approx(float(want), rel=1e-5)


def _ce(logits: torch.Tensor, target: int) -> float:
    """One cross-entropy in float64, from log-softmax: the reference the by-hand sums use."""
    return -float(torch.log_softmax(logits.double(), -1)[target])


def _ints(t, keys=("n", "pix_n", "word_n", "pix_correct", "pixel_all_n")):
    for k in keys:
        assert getattr(t, k).dtype == torch.int64, k  # counts stay integers (pix_weight 1)
    return [int(getattr(t, k)) for k in keys]


def test_loss_terms_dense_branch_by_hand():
    """The local decoder's logits (dense objective): the paper's target is each window's pixel
    0, every valid pixel is in pixel_all_*, and `dense` trains words + every pixel."""
    n_words = 3  # token classes 0-2 words, 3-6 pix (4 pix ids)
    logits = torch.tensor([[[3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],    # word target 0
                            [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 1.0],    # pix target 4 (id 1)
                            [7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0]]])  # IGNORE
    targets = torch.tensor([[0, 4, IG]])
    dl = torch.tensor([[[0.0, 4.0, 0.0, 1.0], [0.0, 0.0, 2.0, 0.5]],   # window 0: pixel 0 hit (1)
                       [[3.0, 0.0, 1.0, 0.0], [9.0, 9.0, 9.0, 9.0]],   # window 1: pixel 0 missed (3)
                       [[0.0, 0.0, 5.0, 0.0], [1.0, 0.0, 0.0, 2.0]],   # window 2: pixel 0 pad
                       [[0.0, 1.0, 6.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # window 3: pixel 0 hit (2)
    # pixel 0 is valid in windows 0, 1, 3 and pixel 1 in windows 0, 2: the counts differ
    dt = torch.tensor([[1, 2], [3, IG], [IG, 0], [2, IG]])
    out = ModelOutput(logits, dense_logits=dl, dense_targets=dt)
    word = _ce(logits[0, 0], 0)
    tok_pix = _ce(logits[0, 1], 4)
    first = [_ce(dl[0, 0], 1), _ce(dl[1, 0], 3), _ce(dl[3, 0], 2)]
    every = first + [_ce(dl[0, 1], 2), _ce(dl[2, 1], 0)]
    t = loss_terms(out, targets, n_words, dense=True)
    assert float(t.sum) == pytest.approx(word + sum(every), rel=1e-6)
    assert float(t.pix_sum) == pytest.approx(sum(first), rel=1e-6)
    assert float(t.word_sum) == pytest.approx(word, rel=1e-6)
    assert float(t.pixel_all_sum) == pytest.approx(sum(every), rel=1e-6)
    assert _ints(t) == [6, 3, 1, 2, 5]  # n = 1 word + 5 valid pixels; 2 of 3 pixel 0s right
    # not dense (the flag, not the output, decides what trains): the token targets' mean
    f = loss_terms(out, targets, n_words)
    assert float(f.sum) == pytest.approx(word + tok_pix, rel=1e-6)
    assert float(f.pix_sum) == pytest.approx(sum(first), rel=1e-6)
    assert float(f.pixel_all_sum) == pytest.approx(sum(every), rel=1e-6)
    assert _ints(f) == [2, 3, 1, 2, 5]
    # pix_weight: every pixel weighs w (dense), the token pixel targets w (not dense)
    w = loss_terms(out, targets, n_words, True, 0.5)
    assert float(w.sum) == pytest.approx(word + 0.5 * sum(every), rel=1e-6)
    assert float(w.n) == 1 + 0.5 * 5
    w = loss_terms(out, targets, n_words, False, 0.25)
    assert float(w.sum) == pytest.approx(word + 0.25 * tok_pix, rel=1e-6)
    assert float(w.n) == 1 + 0.25 * 1
    assert float(w.pix_sum) == pytest.approx(sum(first), rel=1e-6)  # the reported terms stay
    assert _ints(loss_terms(out, targets, n_words, True, 1.0)) == [6, 3, 1, 2, 5]


def test_loss_terms_full_causal_branch_by_hand():
    """full_causal's every-pixel logits: each pixel token predicts the next pixel (class ids,
    IGNORE elsewhere); pixel_all_* sums them, and `dense` trains words + those pixels."""
    n_words = 3
    logits = torch.tensor([[[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0],    # word target 2
                            [0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0],    # pix target 5: hit
                            [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]])  # pix target 6: missed
    targets = torch.tensor([[2, 5, 6]])
    pl = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0],
                        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
                        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0],
                        [0.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0]]])
    pt = torch.tensor([[4, IG, 6, 3]])
    out = ModelOutput(logits, pixel_logits=pl, pixel_targets=pt)
    word = _ce(logits[0, 0], 2)
    tok_pix = [_ce(logits[0, 1], 5), _ce(logits[0, 2], 6)]
    every = [_ce(pl[0, 0], 4), _ce(pl[0, 2], 6), _ce(pl[0, 3], 3)]
    t = loss_terms(out, targets, n_words, dense=True)
    assert float(t.sum) == pytest.approx(word + sum(every), rel=1e-6)
    assert float(t.pixel_all_sum) == pytest.approx(sum(every), rel=1e-6)
    assert float(t.pix_sum) == pytest.approx(sum(tok_pix), rel=1e-6)  # the paper's targets
    assert float(t.word_sum) == pytest.approx(word, rel=1e-6)
    assert _ints(t) == [4, 2, 1, 1, 3]
    f = loss_terms(out, targets, n_words)  # evaluation: reported, not trained
    assert float(f.sum) == pytest.approx(word + sum(tok_pix), rel=1e-6)
    assert float(f.pixel_all_sum) == pytest.approx(sum(every), rel=1e-6)
    assert _ints(f) == [3, 2, 1, 1, 3]
    w = loss_terms(out, targets, n_words, True, 2.0)
    assert float(w.sum) == pytest.approx(word + 2 * sum(every), rel=1e-6)
    assert float(w.n) == 1 + 2 * 3


def test_loss_terms_without_pixel_logits_reports_no_pixels():
    """The paper's model: pixel_all_* are zeros, the default is the plain mean (pix_weight 1,
    not dense), and every count an integer."""
    logits = torch.tensor([[[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 1.0, 3.0]]])
    targets = torch.tensor([[1, 3]])  # a word, then pix class 3 (n_words 3)
    t = loss_terms(ModelOutput(logits), targets, 3)
    assert float(t.pixel_all_sum) == 0.0 and t.pixel_all_sum.dtype == torch.float32
    assert _ints(t) == [2, 1, 1, 1, 0]
    assert float(t.sum) == pytest.approx(_ce(logits[0, 0], 1) + _ce(logits[0, 1], 3), rel=1e-6)
    # dense without a local decoder or pixel logits: words + (no) pixels
    d = loss_terms(ModelOutput(logits), targets, 3, dense=True)
    assert float(d.sum) == pytest.approx(_ce(logits[0, 0], 1), rel=1e-6)
    assert _ints(d) == [1, 1, 1, 1, 0]
