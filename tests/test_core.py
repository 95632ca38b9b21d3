"""The training spine: what the model sees (spec sections 2, 3, 5), configs, loader, model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config, worked_example_rgb
from PIL import Image

from pixword_lit.cli import main
from pixword_lit.data.elements import image_windows, resize_longer_side
from pixword_lit.data.shards import DataError, resolve_shards
from pixword_lit.data.stream import ShardStream
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.pixword import PixWordModel
from pixword_lit.model.tokens import IGNORE, Vocab
from pixword_lit.system.build import build_parts
from pixword_lit.system.config import REPO_ROOT, ConfigError, load_config

EXAMPLE = {
    "pix_tokens": [[0, 1, 4, 5], [2, 3, 6, 7], [0, 1, 4, 5], [2, 3, 6, 7]],
    "inputs": [1, 4, "W0", "W1", "W2", "W3", 5],
    "targets": [4, 6, 8, 6, 8, 5, 2],
    "decoder_positions": [0, 1, 2, 3, 4, 5, 6],
}
EXAMPLE_WIDE = {"targets": [4, 6, 8, 5, IGNORE, IGNORE, 2], "decoder_positions": [0, 1, 2, 3, -1, -1, 4]}


def _inspect(capsys, path, *args):
    assert main(["inspect", str(path), "--image-size", "4", "--window-size", "2", "--fold", "128",
                 "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_worked_example_through_inspect(tmp_path, capsys):
    Image.fromarray(worked_example_rgb(4)).save(tmp_path / "sq.png")
    Image.fromarray(worked_example_rgb(2)).save(tmp_path / "wide.png")
    out = _inspect(capsys, tmp_path / "sq.png")
    assert {k: out[k] for k in EXAMPLE} == EXAMPLE
    assert out["window_mask"] == [1, 1, 1, 1] and out["summary_index"] == [3, 3, 3, 3]
    assert out["image_positions"] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    wide = _inspect(capsys, tmp_path / "wide.png")
    assert {k: wide[k] for k in EXAMPLE_WIDE} == EXAMPLE_WIDE
    assert wide["window_mask"] == [1, 1, 0, 0]
    assert wide["pix_tokens"][2] == [8, 8, 8, 8] and wide["image_positions"][3] == [-1] * 4


def test_inspect_resizes_with_the_chosen_filter(tmp_path, capsys):
    """--resample is the config's data.resample: an 8x8 checkerboard shrunk to 4x4 stays
    black or white under nearest and becomes grey under box (fold 64: grey has its own token)."""
    def tokens(name, rgb, *args):
        Image.fromarray(rgb).save(tmp_path / name)
        assert main(["inspect", str(tmp_path / name), "--image-size", "4", "--window-size", "2",
                     "--fold", "64", "--json", *args]) == 0
        return {int(x) for x in np.ravel(json.loads(capsys.readouterr().out)["pix_tokens"])}

    board = np.repeat((np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[..., None], 3, -1)
    black = tokens("black.png", np.zeros((8, 8, 3), np.uint8))
    white = tokens("white.png", np.full((8, 8, 3), 255, np.uint8))
    nearest = tokens("board.png", board, "--resample", "nearest")
    box = tokens("board.png", board, "--resample", "box")
    assert len(black | white) == 2 and nearest <= black | white
    assert box.isdisjoint(black | white)
    assert main(["inspect", str(tmp_path / "board.png"), "--resample", "sharpest"]) == 2
    assert "--resample: unknown filter 'sharpest'" in capsys.readouterr().err


def test_inspect_document(tmp_path, capsys):
    from data_prep.tokenizer import train_tokenizer

    Image.fromarray(worked_example_rgb(4)).save(tmp_path / "a.png")
    doc = tmp_path / "doc.txt"
    doc.write_text("look <|image|>a.png<|/image|> and again <|image|>a.png<|/image|> done")
    tok = train_tokenizer(["look and again done"] * 5, 300)
    tok.save(str(tmp_path / "tok.json"))
    out = _inspect(capsys, doc, "--images", str(tmp_path), "--tokenizer", str(tmp_path / "tok.json"))
    assert [e["type"] for e in out["elements"]] == ["text", "image", "text", "image", "text"]
    assert out["elements"][1] == {"type": "image", "name": "a.png", "windows": 4}
    windows = [x for x in out["inputs"] if isinstance(x, str)]
    assert windows == [f"W{k}" for k in range(8)]
    v = tok.get_vocab_size()
    # each image: <|image|> predicts its window 0, the last window predicts <|/image|>
    i = out["inputs"].index("W0")
    assert out["targets"][i - 1 : i + 4] == [v + 0, v + 2, v + 0, v + 2, 5]


def test_worked_example_through_loader(worked_example_shards):
    cfg = load_config(None, ["model.image_size=4", "model.window_size=2", "model.folding.factor=128",
                             f"data.train={worked_example_shards}/train",
                             f"data.val={worked_example_shards}/train", "data.batch_size=2",
                             "data.shuffle=false", "data.max_seq_len=16"])
    parts = build_parts(cfg, None)
    stream = ShardStream(parts.train, parts.builder, 2, 0, False)
    (batch,) = list(stream)
    rows = {tuple(t.tolist()): i for i, t in enumerate(batch["targets"])}
    assert tuple(EXAMPLE["targets"]) in rows and tuple(EXAMPLE_WIDE["targets"]) in rows
    sq = rows[tuple(EXAMPLE["targets"])]
    assert batch["pix"][sq].tolist() == EXAMPLE["pix_tokens"]
    assert batch["positions"][sq].tolist() == EXAMPLE["decoder_positions"]
    wide = rows[tuple(EXAMPLE_WIDE["targets"])]
    assert batch["positions"][wide].tolist() == EXAMPLE_WIDE["decoder_positions"]


@pytest.mark.parametrize(
    "h,w,summary,valid",
    [
        (8, 6, [15, 13, 15, 13], [1, 1, 1, 1]),  # portrait: 2 pad columns right -> w*w - p - 1
        (6, 8, [15, 15, 7, 7], [1, 1, 1, 1]),  # landscape: 2 pad rows bottom -> (w - p)*w - 1
        (3, 8, [11, 11, 15, 15], [1, 1, 0, 0]),  # bottom windows all padding: masked
        (8, 3, [14, 15, 14, 15], [1, 0, 1, 0]),  # right windows all padding: masked
    ],
)
def test_partial_windows(h, w, summary, valid):
    fold = UniformFolding(64)
    vocab = Vocab(6, fold.n_pix)
    rng = np.random.default_rng(0)
    win = image_windows(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 8, 4, fold, vocab)
    assert win.valid.astype(int).tolist() == valid
    got = [s for s, v in zip(win.summary_index.tolist(), valid) if v]
    assert got == [s for s, v in zip(summary, valid) if v]
    assert ((win.pix == vocab.pix_pad) == (win.pos < 0)).all()
    # RoPE positions count valid pixels in window-major order, skipping padding
    assert sorted(win.pos[win.pos >= 0].tolist()) == list(range(h * w))
    # the summary index is each kept window's last valid pixel
    for k in np.flatnonzero(win.valid):
        assert win.pos[k, win.summary_index[k]] == win.pos[k].max()


def test_resize_keeps_aspect_and_pads_short_side():
    img = Image.new("RGB", (100, 37))
    assert resize_longer_side(img, 16, "upscale", "bicubic").size == (16, 5)  # int(16*37/100)
    assert resize_longer_side(Image.new("RGB", (37, 100)), 16, "upscale", "box").size == (5, 16)
    assert resize_longer_side(Image.new("RGB", (5, 3)), 16, "upscale", "nearest").size == (16, 9)
    from pixword_lit.data.elements import SkipImage

    with pytest.raises(SkipImage):
        resize_longer_side(Image.new("RGB", (5, 3)), 16, "skip", "nearest")


@pytest.mark.parametrize("factor", [1, 2, 16, 32, 128])
def test_uniform_folding_round_trip(factor):
    fold = UniformFolding(factor)
    rgb = np.random.default_rng(factor).integers(0, 256, (64, 3), dtype=np.uint8)
    ids = fold.fold(rgb)
    assert ids.min() >= 0 and ids.max() < fold.n_pix == (256 // factor) ** 3
    back = fold.colors()[ids].astype(int)
    assert (np.abs(back - rgb.astype(int)) <= factor // 2).all()  # bin centre within half a bin
    assert (fold.fold(fold.colors()) == np.arange(fold.n_pix)).all()  # colors() inverts fold()
    lv = fold.levels
    r, g, b = (rgb.astype(int) // factor).T
    assert (ids == r + g * lv + b * lv * lv).all()


def test_config_errors_name_the_key_before_reading_data(tmp_path):
    missing = [f"data.train={tmp_path}/nope", f"data.val={tmp_path}/nope"]
    cases = {
        "model.window_size=5": "model.window_size",
        "model.folding.factor=24": "model.folding.factor",
        "model.dimm=3": "dimm",
        "model.attention.name=sparse": "model.attention.name",
        "data.mode=video": "data.mode",
        "trainer.precision=8-bit": "trainer.precision",
        "model.n_kv_heads=5": "model.n_kv_heads",
    }
    for override, key in cases.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [override, *missing])
    with pytest.raises(ConfigError, match="valid names: full_causal, global_conditional, pooled"):
        load_config(None, ["model.attention.name=sparse"])
    cfg = load_config(None, missing)  # a valid config; the data error comes only when data is read
    with pytest.raises(DataError, match="data.train"):
        build_parts(cfg, None)


def test_cli_reports_config_error(tmp_path, capsys):
    rc = main(["fit", str(REPO_ROOT / "experiments/quickstart.yaml"), "model.window_size=7",
               f"run.dir={tmp_path}/r"])
    assert rc == 2 and "model.window_size" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing started


@pytest.mark.parametrize("name,decoder_layers", [("paper_image_only", 12), ("paper_mixed", 10)])
def test_paper_configs_build_on_meta_with_paper_size(name, decoder_layers):
    cfg = load_config(REPO_ROOT / "experiments" / f"{name}.yaml")
    assert cfg.model.dim == 768 and cfg.model.decoder_layers == decoder_layers
    fold = UniformFolding(cfg.model.folding.factor)
    n_words = cfg.model.vocab_size or 6
    with torch.device("meta"):
        model = PixWordModel(cfg.model, Vocab(n_words, fold.n_pix), fold)
    n = model.num_params()
    dim, blocks = 768, cfg.model.image_layers + decoder_layers
    per_block = 2 * dim * dim + 2 * dim * 384 + 3 * dim * 2304 + 2 * dim
    expected = blocks * per_block + (4096 + 1) * dim + n_words * dim + dim + dim * (n_words + 4096)
    assert n == expected
    if name == "paper_image_only":
        assert 115e6 < n < 130e6  # "about 120M" (spec section 4)


def test_loader_skips_corrupt_images_and_counts_them(tmp_path, glyph_shards):
    import tarfile

    src = glyph_shards / "train" / "shard-000000.tar"
    bad = tmp_path / "bad"
    bad.mkdir()
    with tarfile.open(src) as tin, tarfile.open(bad / "shard-000000.tar", "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name.endswith("00000001.img0.png"):
                data = data[:40]  # truncated PNG
            m.size = len(data)
            import io

            tout.addfile(m, io.BytesIO(data))
    (bad / "index.json").write_text((glyph_shards / "train" / "index.json").read_text())
    cfg = tiny_config(glyph_shards, tmp_path, f"data.train={bad}", "data.shuffle=false",
                      f"data.tokenizer={glyph_shards}/tokenizer.json")
    parts = build_parts(cfg, None)
    stream = ShardStream(parts.train, parts.builder, 8, 0, False)
    batches = list(stream)
    assert sum(int(b["n_skipped"]) for b in batches) == 1
    assert sum(int((b["targets"] != IGNORE).any(1).sum()) for b in batches) == parts.train.total - 1


def test_missing_index_is_a_clear_error(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(DataError, match="index.json"):
        resolve_shards(str(tmp_path / "shards"), None, "image_only", "data.train")
