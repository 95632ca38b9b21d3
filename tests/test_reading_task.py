"""The reading task (`prep glyphs --task reading`) and the reading eval's image-blind controls.

Heights are measured in the images (rows holding a pixel that differs from the flat
background), unseen val strings never occur in train, the metadata matches the pixels, and the
controls of `pixword eval captions` are recomputed by hand from their definition
(pixword_lit/README.md, "Reading eval"; infer/controls.py) on a non-glyph mixed dataset.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter

import numpy as np
import pytest
import webdataset as wds
from conftest import tiny_config
from PIL import Image
from tokenizers import Tokenizer

from data_prep import reading
from data_prep.cli import main as prep_main
from data_prep.glyphs import NUM_DEFAULTS, build_glyphs
from data_prep.mixed import build_mixed
from pixword_lit.infer.controls import Prior

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTION = re.compile(r'^The text says "(\d+)"\.$')
LUMA = np.array([0.299, 0.587, 0.114])


def samples_of(folder):
    index = json.loads((folder / "index.json").read_text())
    urls = [str(folder / s["name"]) for s in index["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


@pytest.fixture(scope="module")
def reading_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("reading")
    build_glyphs(out, task="reading", num_train=300, num_val=120, seed=5)
    return out


def test_heights_drawn_as_asked_and_metadata_true_to_the_image(reading_shards):
    heights = Counter()
    for split in ("train", "val"):
        for s in samples_of(reading_shards / split):
            _, image, caption = json.loads(s["json"])["elements"]
            g = image["glyph"]
            said = CAPTION.match(caption["text"]).group(1)
            assert g["task"] == "reading" and g["drawn"] == said and len(said) == reading.LENGTH
            px = np.asarray(Image.open(io.BytesIO(s["img0.png"])).convert("RGB")).astype(int)
            assert px.shape == (reading.CANVAS[1], reading.CANVAS[0], 3)
            assert (image["width"], image["height"]) == reading.CANVAS
            # the background: the image's most common colour, flat
            colours, counts = np.unique(px.reshape(-1, 3), axis=0, return_counts=True)
            bg = colours[counts.argmax()]
            assert bg.tolist() == g["bg"]
            ink = (px != bg).any(-1)
            rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
            # the rule: ink rows are exactly the stored height, at the stored box
            assert rows[-1] - rows[0] + 1 == g["text_height"], (split, g)
            assert (rows[0], cols[0]) == (g["y"], g["x"])
            assert cols[-1] - cols[0] + 1 == g["text_width"]
            assert g["text_height"] in reading.HEIGHTS
            # every ink pixel lies between the stored colours (coverage a: bg + a (fg - bg),
            # rounded); the text colour itself shows once the strokes are a pixel wide
            fg = np.array(g["fg"])
            assert abs(fg @ LUMA - bg @ LUMA) >= 100
            a = ((px - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
            assert np.abs(bg + a[..., None] * (fg - bg) - px).max() <= 1 and a.min() >= -0.01
            assert g["text_height"] < 8 or (px == fg).all(-1).any()
            assert g["font_size"] > 0 and g["render_size"] == reading.RENDER_SCALE * g["text_height"]
            heights[g["text_height"]] += 1
    assert set(heights) == set(reading.HEIGHTS)  # every height drawn, roughly evenly
    assert min(heights.values()) > 420 / len(reading.HEIGHTS) / 2


def test_unseen_val_strings_never_appear_in_train(reading_shards):
    train = [json.loads(s["json"])["elements"][1]["glyph"] for s in samples_of(reading_shards / "train")]
    val = [json.loads(s["json"])["elements"][1]["glyph"] for s in samples_of(reading_shards / "val")]
    train_strings = {g["drawn"] for g in train}
    assert {g["pool"] for g in train} == {"train"}
    held = [g["drawn"] for g in val if g["pool"] == "held_out"]
    assert 30 < len(held) < 90  # about half of 120
    assert not set(held) & train_strings
    # the held-out strings are a fixed set disjoint from the training pool
    pool, held_out = reading.pools(5, reading.LENGTH)
    assert not set(pool.tolist()) & set(held_out.tolist())
    assert len(pool) + len(held_out) == 10**reading.LENGTH
    assert {int(s) for s in held} <= set(held_out.tolist())


def test_digits_are_single_tokens_and_the_prompt_splits_cleanly(reading_shards):
    tok = Tokenizer.from_file(str(reading_shards / "tokenizer.json"))
    full = tok.encode('The text says "407".', add_special_tokens=False).tokens
    prefix = tok.encode('The text says "', add_special_tokens=False).tokens
    rest = tok.encode('407".', add_special_tokens=False).tokens
    assert full == prefix + rest and rest[:3] == ["4", "0", "7"]


def test_sample_depends_only_on_seed_split_index_and_defaults_are_large_enough():
    a = reading.make_sample(0, "val", 11)
    b = reading.make_sample(0, "val", 11)
    assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes()
    assert NUM_DEFAULTS["reading"][1] >= 512
    assert min(reading.HEIGHTS) < 8 < max(reading.HEIGHTS)  # below and above an 8 px window


@pytest.mark.parametrize("argv, names", [
    (["--task", "reading", "--canvas", "30x24"], "--canvas 30x24"),
    (["--task", "reading", "--heights", "4,30"], "--heights 4,30"),
    (["--task", "reading", "--heights", "4,x"], "--heights"),
    (["--length", "4"], "--length"),
])
def test_bad_reading_arguments_one_line_exit_2(argv, names, tmp_path, capsys):
    assert prep_main(["glyphs", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert names in err[-1] and err[-1].startswith("pixword prep glyphs: error:")
    assert not (tmp_path / "o").exists()


def test_prior_by_hand_on_three_answers():
    # continuations "ab" (twice) and "c" as tokens; a vocabulary of 20 words
    prior = Prior.fit([("ab", [7, 8]), ("ab", [7, 8]), ("c", [9])], 20)
    k = 3  # tokens 7, 8, 9
    # position 0: three continuations (7, 7, 9); position 1: two (8, 8)
    q0_7, q0_9, q1_8 = (2 + 1) / (3 + k + 1), (1 + 1) / (3 + k + 1), (2 + 1) / (2 + k + 1)
    q1_9 = (0 + 1) / (2 + k + 1)
    q1_other = 1 / ((2 + k + 1) * (20 - k))
    assert prior.log_prob([7, 8]) == pytest.approx(math.log(max(2 / 3, q0_7 * q1_8)))
    assert prior.log_prob([9]) == pytest.approx(math.log(max(1 / 3, q0_9)))
    assert prior.log_prob([9, 9]) == pytest.approx(math.log(q0_9 * q1_9))  # never in train
    assert prior.log_prob([7, 15]) == pytest.approx(math.log(q0_7 * q1_other))
    assert prior.most_frequent() == "ab" and prior.chance("c") == pytest.approx(1 / 3)


# --- the controls on a non-glyph mixed dataset ----------------------------------------------

WORDS = ["cat", "dog", "sun", "cat", "moon", "cat", "tree", "dog", "lamp", "cat", "bird", "sun",
         "cat", "rock", "dog", "fish", "cat", "ship", "sun", "cake", "cat", "road", "dog", "star"]
PREFIX = 'The text says "'


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    from pixword_lit.fit.train import fit

    tmp = tmp_path_factory.mktemp("mixed_controls")
    docs, imgs = tmp / "docs", tmp / "imgs"
    docs.mkdir()
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i, word in enumerate(WORDS):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(imgs / f"im{i}.png")
        (docs / f"doc{i:02d}.txt").write_text(f"Look. <|image|>im{i}.png<|/image|> {PREFIX}{word}\". Done.")
    (docs / "noprefix.txt").write_text('Look. <|image|>im0.png<|/image|> It says "cat".')
    (docs / "imagelast.txt").write_text("Look at it. <|image|>im1.png<|/image|>")
    out = tmp / "shards"
    build_mixed(docs, imgs, out, image_size=16, window_size=4, max_seq_len=64, vocab_size=300,
                val_fraction=0.4)
    fit(tiny_config(out, tmp, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    return out, tmp / "run" / "checkpoints" / "last.ckpt"


def _continuations(folder):
    """Text after PREFIX of every document whose text after its last image starts with it."""
    out = []
    for s in samples_of(folder):
        els = json.loads(s["json"])["elements"]
        last = max(i for i, e in enumerate(els) if e["type"] == "image")
        after = [e["text"] for e in els[last + 1 :] if e["type"] == "text"]
        if after and after[0].startswith(PREFIX):
            out.append(after[0][len(PREFIX) :])
    return out


def test_eval_captions_on_mixed_documents_reports_the_blind_floor(mixed_run, tmp_path, capsys):
    from pixword_lit.cli import main

    shards, ckpt = mixed_run
    out = tmp_path / "eval"
    assert main(["eval", "captions", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image-blind controls" in printed and "unseen answers" in printed
    r = json.loads((out / "captions.json").read_text())

    # by hand, from the definition
    tok = Tokenizer.from_file(str(shards / "tokenizer.json"))
    ids = lambda s: tuple(tok.encode(s, add_special_tokens=False).ids)  # noqa: E731
    train, val = _continuations(shards / "train"), _continuations(shards / "val")
    assert len(train) >= 5 and len(val) >= 3
    n, v = len(train), tok.get_vocab_size()
    seqs = [ids(t) for t in train]
    known = {t for s in seqs for t in s}
    k = len(known)

    def q(j, t):
        nj = sum(len(s) > j for s in seqs)
        c = sum(len(s) > j and s[j] == t for s in seqs)
        return (c + 1) / (nj + k + 1) if t in known else 1 / ((nj + k + 1) * (v - k))

    def p(rest):
        s = ids(rest)
        return max(sum(x == s for x in seqs) / n, math.prod(q(j, t) for j, t in enumerate(s)))

    answer = lambda rest: rest.split('"', 1)[0].strip()  # noqa: E731
    blind = -sum(math.log(p(x)) for x in val) / sum(len(ids(x)) for x in val)
    counts = Counter(answer(t) for t in train)
    top = min(a for a, c in counts.items() if c == max(counts.values()))
    assert r["eval/blind_nll"] == pytest.approx(blind, rel=1e-9)
    assert r["eval/blind_exact_match"] == pytest.approx(sum(answer(x) == top for x in val) / len(val))
    assert r["eval/chance_exact_match"] == pytest.approx(sum(counts[answer(x)] / n for x in val) / len(val))
    assert r["train_answers"] == n and r["most_frequent_train_answer"] == top
    seen = [answer(x) in counts for x in val]
    assert [rec["seen"] for rec in r["records"]] == seen
    assert any(seen) and not all(seen)  # both kinds in this tiny val split
    assert r["by_seen"]["seen"]["n"] + r["by_seen"]["unseen"]["n"] == r["documents"] == len(val)
    assert r["by_seen"]["unseen"]["blind_exact_match"] == 0 == r["by_seen"]["unseen"]["chance_exact_match"]
    # the model's own NLL, per group, recombines to the total
    nll = sum(rec["nll"] for rec in r["records"]) / sum(len(rec["ids"]) for rec in r["records"])
    assert r["eval/answer_nll"] == pytest.approx(nll)
    summary = json.loads((ckpt.parent.parent / "summary.json").read_text())
    assert summary["eval/blind_nll"] == r["eval/blind_nll"]
    assert "blind NLL" in (out / "captions.md").read_text()


def test_reading_shards_break_down_by_exact_height(mixed_run, reading_shards, tmp_path):
    from pixword_lit.infer.captions import eval_captions

    _, ckpt = mixed_run
    r = eval_captions(str(ckpt), f"{reading_shards}/val", out_dir=str(tmp_path / "e"), limit=24,
                      train=f"{reading_shards}/train")
    # the 48x24 canvas is read at image_size 16 in 4 px windows: height h px -> h / 3 / 4 windows
    want = {f"{h / 3 / 4:.3g}" for h in reading.HEIGHTS}
    assert set(r["by_glyph_height_windows"]) <= want and len(r["by_glyph_height_windows"]) >= 3
    assert sum(b["n"] for b in r["by_glyph_height_windows"].values()) == 24
    # val strings from the held-out pool are never seen in train
    assert r["train_answers"] == 300 and r["by_seen"]["unseen"]["n"] > 0
    assert math.isfinite(r["eval/blind_nll"]) and r["eval/blind_nll"] > 0


def test_eval_captions_missing_train_split_is_one_line(mixed_run, tmp_path, capsys):
    from pixword_lit.cli import main

    _, ckpt = mixed_run
    code = main(["eval", "captions", str(ckpt), "--train", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--train" in err[0]


def test_reading_shards_do_not_depend_on_workers(tmp_path):
    for w in (1, 2):
        build_glyphs(tmp_path / f"w{w}", task="reading", num_train=24, num_val=8, workers=w)
    for f in ("train/shard-000000.tar", "val/shard-000000.tar", "tokenizer.json"):
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes(), f


# --- --strings words: a closed set of capital words --------------------------------------------

WORD_CAPTION = re.compile(r'^The text says "([A-Z]+)"\.$')


@pytest.fixture(scope="module")
def word_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("reading_words")
    build_glyphs(out, task="reading", strings="words", num_train=200, num_val=160, seed=5)
    return out


def _glyphs(folder):
    for s in samples_of(folder):
        _, image, caption = json.loads(s["json"])["elements"]
        yield image["glyph"], caption["text"], s["img0.png"]


def test_words_come_from_the_list_held_out_never_in_train_and_ink_height_exact(word_shards):
    train_words, held_words = reading.word_pools(5)
    assert len(held_words) == reading.WORDS_HELD_OUT and not set(train_words) & set(held_words)
    assert set(train_words) | set(held_words) == set(reading.WORDS)
    pools, heights = {"train": Counter(), "val": Counter()}, Counter()
    for split in ("train", "val"):
        for g, caption, png in _glyphs(word_shards / split):
            word = WORD_CAPTION.match(caption).group(1)
            assert g["drawn"] == word and g["strings"] == "words" and 2 <= len(word) <= 4
            assert word in (held_words if g["pool"] == "held_out" else train_words)
            pools[split][g["pool"]] += 1
            px = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
            ink = (px != np.array(g["bg"])).any(-1)
            rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
            assert rows[-1] - rows[0] + 1 == g["text_height"] and (rows[0], cols[0]) == (g["y"], g["x"])
            assert cols[-1] - cols[0] + 1 == g["text_width"]
            heights[g["text_height"]] += 1
    assert set(pools["train"]) == {"train"}  # held-out words never in train
    assert 20 < pools["val"]["held_out"] < 70 and pools["val"]["train"] > 90  # about 1/4 of 160
    assert set(heights) == set(reading.WORD_HEIGHTS)


def test_every_word_is_one_token_held_out_words_too(word_shards):
    tok = Tokenizer.from_file(str(word_shards / "tokenizer.json"))
    prefix = tok.encode('The text says "', add_special_tokens=False).tokens
    assert tok.encode("Read the text in the image.", add_special_tokens=False).tokens[0] == "Read"
    for word in reading.WORDS:  # IN, ON, HE... stay whole inside INFO, ONE, HELP
        full = tok.encode(f'The text says "{word}".', add_special_tokens=False).tokens
        assert full == [*prefix, word, '".'] and tok.decode(tok.encode(f'"{word}".').ids) == f'"{word}".'


def test_word_samples_deterministic_and_digit_builds_unchanged(word_shards, reading_shards, tmp_path):
    a = reading.make_sample(5, "val", 7, heights=reading.WORD_HEIGHTS, strings="words")
    b = reading.make_sample(5, "val", 7, heights=reading.WORD_HEIGHTS, strings="words")
    assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes()
    build_glyphs(tmp_path / "again", task="reading", strings="words", num_train=200, num_val=160, seed=5)
    for f in ("train/shard-000000.tar", "val/shard-000000.tar", "tokenizer.json"):
        assert (tmp_path / "again" / f).read_bytes() == (word_shards / f).read_bytes(), f
    words_args = json.loads((word_shards / "val" / "index.json").read_text())["args"]
    digit_args = json.loads((reading_shards / "val" / "index.json").read_text())["args"]
    assert words_args["strings"] == "words" and words_args["heights"] == list(reading.WORD_HEIGHTS)
    assert "strings" not in digit_args  # digit builds keep their arguments and bytes


@pytest.mark.parametrize("argv, names", [
    (["--task", "reading", "--strings", "words", "--heights", "4,16"], "--canvas 48x24"),
    (["--task", "reading", "--strings", "words", "--length", "3"], "--length"),
    (["--strings", "words"], "--strings"),
])
def test_bad_word_arguments_one_line_exit_2(argv, names, tmp_path, capsys):
    assert prep_main(["glyphs", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert names in err[-1] and err[-1].startswith("pixword prep glyphs: error:")
    assert not (tmp_path / "o").exists()


def test_black_ink_centred_words_are_black_on_white_in_the_middle(tmp_path):
    """--ink black --place center: white background, black text (grey only at stroke edges),
    the ink box centred (rounded down), the choice recorded in the build's args and glyphs."""
    out = tmp_path / "plain"
    assert prep_main(["glyphs", "--out", str(out), "--task", "reading", "--strings", "words",
                      "--ink", "black", "--place", "center", "--num-train", "40",
                      "--num-val", "8", "--seed", "3"]) == 0  # fmt: skip
    w, h = reading.CANVAS
    n = 0
    for split in ("train", "val"):
        for g, caption, png in _glyphs(out / split):
            assert (g["ink"], g["place"], g["bg"], g["fg"]) == ("black", "center", [255] * 3, [0] * 3)
            px = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
            assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()  # grey
            ink = px[..., 0] < 255
            rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
            assert rows[-1] - rows[0] + 1 == g["text_height"] and cols[-1] - cols[0] + 1 == g["text_width"]
            assert (rows[0], cols[0]) == (g["y"], g["x"]) == ((h - g["text_height"]) // 2,
                                                              (w - g["text_width"]) // 2)
            assert g["text_height"] < 8 or (px[..., 0] == 0).any()  # black strokes
            assert WORD_CAPTION.match(caption).group(1) == g["drawn"]
            n += 1
    assert n == 48
    args = json.loads((out / "train" / "index.json").read_text())["args"]
    assert (args["ink"], args["place"]) == ("black", "center")
    assert prep_main(["glyphs", "--out", str(tmp_path / "o"), "--ink", "black"]) == 2  # reading only
