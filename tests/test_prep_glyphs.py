"""data_prep: the built-in glyph dataset (small rendered plates, numbers and words)."""

import io
import json
import re

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageFont

from data_prep import glyphs
from data_prep.cli import main
from data_prep.glyphs import PROMPT, build_glyphs, make_sample
from data_prep.tokenizer import SPECIAL_TOKENS, load_tokenizer

CAPTION = re.compile(r'^The text says "(.+)"\.$')
PLATE = re.compile(r"^[A-Z0-9]{2,4}[ -][A-Z0-9]{2,4}([ -][A-Z0-9]{2})?$")


def samples_of(folder):
    index = json.loads((folder / "index.json").read_text())
    urls = [str(folder / s["name"]) for s in index["shards"]]
    return index, list(wds.WebDataset(urls, shardshuffle=False))


def test_glyph_samples(tmp_path):
    out = tmp_path / "g"
    report = build_glyphs(out, num_train=60, num_val=12, seed=3)
    assert report["samples_written"] == {"train": 60, "val": 12} and report["skipped"] == []
    tok = load_tokenizer(out / "tokenizer.json")
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(6))
    said = []
    for split, n in (("train", 60), ("val", 12)):
        index, samples = samples_of(out / split)
        assert index["kind"] == "glyphs" and index["num_samples"] == n == index["num_images"]
        assert index["tokenizer"] == "../tokenizer.json"
        for i, s in enumerate(samples):
            prompt, image, caption = json.loads(s["json"])["elements"]
            assert prompt == {"type": "text", "text": PROMPT}
            assert image["name"] == f"glyph_{split}_{i:06d}.png"
            said.append(CAPTION.match(caption["text"]).group(1))
            img = Image.open(io.BytesIO(s["img0.png"]))
            assert img.mode == "RGB" and img.size == (image["width"], image["height"])
            assert 24 <= img.width <= 96 and 12 <= img.height <= 40
            luma = np.asarray(img) @ np.array([0.299, 0.587, 0.114])
            assert np.ptp(luma) > 70  # the (anti-aliased) text stands out
    assert any(PLATE.match(t) for t in said)
    assert any(re.fullmatch(r"[\d.%]+", t) for t in said)
    assert any(re.fullmatch(r"[A-Za-z]+", t) for t in said)


def test_sample_depends_only_on_seed_split_index():
    a_el, a_img = make_sample(0, "train", 17)
    b_el, b_img = make_sample(0, "train", 17)
    assert a_el == b_el and a_img.tobytes() == b_img.tobytes()
    assert make_sample(1, "train", 17)[0] != a_el or make_sample(1, "train", 17)[1] != a_img
    assert make_sample(0, "val", 17)[0][1]["name"] == "glyph_val_000017.png"
    # the tokenizer's training text is drawn without rendering; it must match the samples
    texts = [el["text"] for i in range(30) for el in make_sample(0, "train", i)[0] if "text" in el]
    assert list(glyphs._train_texts(0, 30)) == texts


def test_counts_do_not_change_samples_and_builds_are_identical(tmp_path):
    build_glyphs(tmp_path / "a", num_train=8, num_val=2)
    build_glyphs(tmp_path / "b", num_train=20, num_val=5)
    build_glyphs(tmp_path / "c", num_train=20, num_val=5)
    _, a = samples_of(tmp_path / "a" / "train")
    _, b = samples_of(tmp_path / "b" / "train")
    assert [(s["json"], s["img0.png"]) for s in a] == [(s["json"], s["img0.png"]) for s in b[:8]]
    for rel in ("train/shard-000000.tar", "val/shard-000000.tar", "tokenizer.json"):
        assert (tmp_path / "b" / rel).read_bytes() == (tmp_path / "c" / rel).read_bytes()


def test_bitmap_font_fallback_warns(monkeypatch):
    monkeypatch.setattr(
        glyphs.ImageFont, "load_default", lambda size=None: ImageFont.load_default_imagefont()
    )
    glyphs.font.cache_clear()
    try:
        with pytest.warns(UserWarning, match="bitmap"):
            _, img = make_sample(0, "train", 0)  # still renders, with the bitmap font
        assert img.mode == "RGB"
    finally:
        glyphs.font.cache_clear()


def test_default_glyph_build(tmp_path, capsys):
    # What `make quickstart` builds (with the default --workers, all cores); its speed is
    # measured in README, not asserted here.
    assert main(["glyphs", "--out", str(tmp_path / "g")]) == 0
    assert "4000 train, 256 val" in capsys.readouterr().out
    index = json.loads((tmp_path / "g" / "train" / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [1000] * 4
    sizes = index["image_sizes"]
    assert sizes["count_landscape"] > 3000 and sizes["count_portrait"] > 0


def test_interrupted_glyphs_leave_no_partial_file_and_a_rerun_matches(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the (one) train shard is open, then while the indexes are written, then a
    rerun: a shard has its final name only when finished, an index.json only for a split whose
    shards are all finished, report.json only for a finished build; the tokenizer trained
    before the interruption is kept, and the output is byte-identical to an uninterrupted
    build's."""
    from test_prep_llava import files, interrupt
    from test_prep_run import tree

    args = ["glyphs", "--num-train", "20", "--num-val", "6", "--seed", "2", "--vocab-size", "300",
            "--workers", "1"]
    fresh, out = tmp_path / "fresh", tmp_path / "out"
    assert main([*args, "--out", str(fresh)]) == 0
    interrupt(monkeypatch, at_sample=12)
    assert main([*args, "--out", str(out)]) == 130
    assert "interrupted; rerun the same command" in capsys.readouterr().err
    assert files(out) == {"progress.json", "tokenizer.json", "train/shard-000000.tar.tmp"}
    assert (out / "tokenizer.json").read_bytes() == (fresh / "tokenizer.json").read_bytes()
    monkeypatch.undo()
    interrupt(monkeypatch, at_index="val")
    assert main([*args, "--out", str(out)]) == 130
    assert files(out) == {"progress.json", "tokenizer.json", "train/shard-000000.tar",
                          "train/index.json", "val/shard-000000.tar"}
    assert not json.loads((out / "progress.json").read_text())["complete"]
    monkeypatch.undo()
    assert main([*args, "--out", str(out)]) == 0
    resumed, uninterrupted = tree(out), tree(fresh)
    assert resumed.pop("progress.json") and uninterrupted.pop("progress.json")
    assert resumed == uninterrupted
