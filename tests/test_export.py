"""`pixword export`: a checkpoint -> model.safetensors + config.yaml + tokenizer.json +
pixword.json, which generate, eval captions and validate take like the checkpoint (same
outputs); the public face in pixword_lit/__init__.py; refusals of bad input."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf

import pixword_lit as pw
from data_prep.glyphs import PROMPT
from pixword_lit.cli import main
from pixword_lit.fit.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread
AFTER = 'The text says "'
FILES = {"model.safetensors", "config.yaml", "tokenizer.json", "pixword.json"}


@pytest.fixture(scope="module")
def trained(glyph_shards, tmp_path_factory):
    """A tiny mixed run (4 steps) and its export made by the CLI: (last.ckpt, export folder)."""
    tmp = tmp_path_factory.mktemp("export")
    fit(tiny_config(glyph_shards, tmp, "trainer.max_steps=4", "trainer.val_check_interval=4"))
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    assert main(["export", str(ckpt), "--out", str(tmp / "exported")]) == 0
    return ckpt, tmp / "exported"


def _error_line(capsys, cmd: str) -> str:
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith(f"pixword {cmd}: error: "), err
    return err[0]


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN (json of validate's metrics)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---- the folder -----------------------------------------------------------------------------
def test_folder_holds_the_checkpoint_weights_as_plain_safetensors(trained):
    from safetensors import safe_open
    from safetensors.torch import load_file

    ckpt, out = trained
    assert {p.name for p in out.iterdir()} == FILES
    assert len({(out / f).stat().st_mode for f in FILES}) == 1  # all readable alike (shared folders)
    saved = torch.load(ckpt, weights_only=True)
    weights = load_file(out / "model.safetensors")
    sd = saved["state_dict"]
    assert weights.keys() == sd.keys() and "color_counts" in weights
    for k, v in sd.items():
        assert weights[k].dtype == v.dtype and torch.equal(weights[k], v), k
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses files without it
    # the file is its JSON header and the raw tensor bytes, nothing else (no pickle anywhere)
    raw = (out / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    spans = sorted(tuple(e["data_offsets"]) for k, e in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert 8 + n + spans[-1][1] == len(raw)
    hp = saved["hyper_parameters"]
    meta = json.loads((out / "pixword.json").read_text())
    assert meta["format"] == "pixword-export" and meta["format_version"] == 1
    assert (meta["n_words"], meta["folding_state"]) == (hp["n_words"], hp["folding_state"])
    assert meta["global_step"] == saved["global_step"] == 4
    assert meta["source_checkpoint"] == str(ckpt.resolve()) and meta["tokenizer"] == "tokenizer.json"
    run_summary = json.loads((ckpt.parents[1] / "summary.json").read_text())
    assert meta["run_git_commit"] == run_summary["git_commit"]
    from pixword_lit.provenance import git_commit

    assert meta["git_commit"] == git_commit()  # the exporting checkout (the CLI's)
    assert OmegaConf.to_container(OmegaConf.load(out / "config.yaml")) == hp["config"]
    assert (out / "tokenizer.json").read_text() == hp["tokenizer"]


# ---- same outputs as the checkpoint ---------------------------------------------------------
def test_generate_from_the_export_gives_the_checkpoints_outputs(trained, glyph_shards, tmp_path, capsys):
    ckpt, out = trained
    for extra in ([], ["--temperature", "1.0", "--top-k", "20", "--seed", "3"]):  # greedy, sampled
        got = []
        for src in (ckpt, out):
            f = tmp_path / f"{src.name}.jsonl"
            assert main(["generate", str(src), "--data", f"{glyph_shards}/val", "--out", str(f),
                         "--prompt", AFTER, "--max-new-tokens", "4", *extra]) == 0
            got.append([{k: v for k, v in json.loads(line).items() if k != "seconds"}
                        for line in f.read_text().splitlines()])
        assert len(got[0]) == 16 and got[0] == got[1]
    from pixword_lit.data.shards import read_shard  # one glyph image through --image too

    raw = next(iter(read_shard(str(sorted((glyph_shards / "val").glob("*.tar"))[0]))))
    image = tmp_path / "plate.png"
    image.write_bytes(raw[json.loads(raw["json"])["elements"][1]["file"]])
    capsys.readouterr()
    printed = []
    for src in (ckpt, out):
        assert main(["generate", str(src), "--image", str(image), "--before", PROMPT,
                     "--prompt", AFTER, "--max-new-tokens", "6"]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and printed[0].strip()


def test_eval_captions_from_the_export_gives_the_checkpoints_results(trained, tmp_path, capsys):
    ckpt, out = trained
    results = []
    for src in (ckpt, out):
        dest = tmp_path / f"eval-{src.name}"
        assert main(["eval", "captions", str(src), "--out", str(dest), "--limit", "5"]) == 0
        r = json.loads((dest / "captions.json").read_text())
        assert r.pop("checkpoint") == str(src)
        results.append(r)
    assert results[0]["documents"] == 5 and _same(results[0], results[1])
    assert math.isfinite(results[0]["eval/answer_nll"])


def test_validate_from_the_export_gives_the_checkpoints_metrics(trained, capsys):
    ckpt, out = trained
    metrics = []
    for src in (ckpt, out):
        capsys.readouterr()
        assert main(["validate", str(src)]) == 0
        metrics.append(json.loads(capsys.readouterr().out))
    assert {"val/loss", "baseline/pix_loss", "val/pix_acc"} <= metrics[0].keys()
    assert _same(metrics[0], metrics[1])
    # settings that change the model are refused as for a checkpoint
    assert main(["validate", str(out), "model.dim=64"]) == 2
    assert "model.dim: 32 in the checkpoint, 64 now" in _error_line(capsys, "validate")


# ---- palette folding, image-only, no tokenizer (a checkpoint made by hand, no training) ----
def test_palette_image_only_round_trip(tmp_path):
    import lightning as L

    from pixword_lit.infer.export import load_export
    from pixword_lit.system.config import DEBUG_MODEL
    from pixword_lit.system.lit_module import PixWordLit

    tiny = [o for o in DEBUG_MODEL if not o.startswith("model.folding.")]  # a palette has no factor
    cfg = pw.load_config(None, [*tiny, "data.mode=image_only", "model.folding.name=palette",
                                "model.folding.colors=5"])
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 250]]
    torch.manual_seed(0)
    module = PixWordLit(OmegaConf.to_container(cfg, resolve=True), 6,
                        {"name": "palette", "palette": palette})
    module.color_counts += torch.arange(5, dtype=torch.float64)
    ckpt = tmp_path / "hand.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "global_step": 7, "pytorch-lightning_version": L.__version__}, ckpt)
    out = pw.export(ckpt, tmp_path / "exp")
    assert {p.name for p in out.iterdir()} == FILES - {"tokenizer.json"}
    meta = json.loads((out / "pixword.json").read_text())
    assert meta["tokenizer"] is None and meta["folding_state"]["palette"] == palette
    assert meta["global_step"] == 7
    again = load_export(out)
    want = module.state_dict()
    assert again.state_dict().keys() == want.keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in want.items())
    run = pw.load_run(out, words=False)
    assert run.tokenizer is None and run.builder.folding.colors().tolist() == palette
    # an export re-exported: the same weights, the first source's step kept
    twice = pw.export(out, tmp_path / "exp2")
    assert json.loads((twice / "pixword.json").read_text())["global_step"] == 7
    assert (twice / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


# ---- refusals -------------------------------------------------------------------------------
def test_export_refuses_bad_out_and_bad_input(trained, tmp_path, capsys):
    from test_checkpoints import with_payload

    ckpt, _ = trained
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["export", str(ckpt), "--out", str(busy)]) == 2
    assert f"--out: {busy} is not empty; pass --overwrite" in _error_line(capsys, "export")
    assert main(["export", str(ckpt), "--out", str(busy), "--overwrite"]) == 2
    assert "not a pixword export" in _error_line(capsys, "export")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]  # untouched
    assert main(["export", str(ckpt), "--out", str(busy / "notes.txt")]) == 2
    assert "notes.txt is a file" in _error_line(capsys, "export")
    never = tmp_path / "never"
    assert main(["export", str(tmp_path / "missing.ckpt"), "--out", str(never)]) == 2
    assert "missing.ckpt: no such file" in _error_line(capsys, "export")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"PK\x03\x04 cut short")
    assert main(["export", str(junk), "--out", str(never)]) == 2
    assert "junk.ckpt: truncated or damaged" in _error_line(capsys, "export")
    marker = tmp_path / "PWNED"
    evil = with_payload(ckpt, tmp_path / "evil.ckpt", marker)
    assert main(["export", str(evil), "--out", str(never)]) == 2
    assert "evil.ckpt: refused" in _error_line(capsys, "export") and not marker.exists()
    assert not never.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stray temp folder
    # an existing empty folder is filled; --overwrite replaces an earlier export
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(ckpt), "--out", str(empty)]) == 0
    first = (empty / "model.safetensors").read_bytes()
    (empty / "pixword.json").write_text((empty / "pixword.json").read_text().replace('"global_step": 4',
                                                                                     '"global_step": 99'))
    assert main(["export", str(ckpt), "--out", str(empty), "--overwrite"]) == 0
    assert json.loads((empty / "pixword.json").read_text())["global_step"] == 4
    assert (empty / "model.safetensors").read_bytes() == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage", ["no model.safetensors", "no config.yaml", "no pixword.json",
                                    "no tokenizer.json", "only config.yaml", "truncated weights",
                                    "other shapes", "newer format"])
def test_loading_a_damaged_export_says_which_file(trained, tmp_path, capsys, damage):
    import shutil

    _, out = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    name = damage.removeprefix("no ")
    if damage.startswith("no "):
        (bad / name).unlink()
        want = f"{bad}: export folder without {name}"
    elif damage == "only config.yaml":
        for f in FILES - {"config.yaml"}:
            (bad / f).unlink()
        want = f"{bad}: export folder without pixword.json"
    elif damage == "truncated weights":
        w = bad / "model.safetensors"
        w.write_bytes(w.read_bytes()[:-100])
        want = f"{w}: unreadable, truncated or damaged"
    elif damage == "other shapes":
        cfg = OmegaConf.load(bad / "config.yaml")
        cfg.model.decoder_layers = 3
        OmegaConf.save(cfg, bad / "config.yaml")
        want = f"{bad / 'model.safetensors'}: its tensors do not fit config.yaml"
    else:
        meta = json.loads((bad / "pixword.json").read_text())
        meta["format_version"] = 2
        (bad / "pixword.json").write_text(json.dumps(meta))
        want = "format version 2 is newer than this pixword reads (1)"
    assert main(["generate", str(bad), "--image", "unused.png"]) == 2
    assert want in _error_line(capsys, "generate")


# ---- the public face ------------------------------------------------------------------------
def test_import_pixword_lit_loads_no_torch():
    code = ("import sys, pixword_lit, pixword_lit.cli; pixword_lit.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'lightning', 'omegaconf') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_public_face_config_build_and_load(trained, tmp_path):
    from pixword_lit.model.pixword import PixWordModel
    from pixword_lit.system.config import DEBUG_MODEL, ConfigError
    from pixword_lit.system.config import load_config as inner

    ckpt, out = trained
    over = [*DEBUG_MODEL, "model.dim=48"]
    cfg = pw.load_config("experiments/quickstart.yaml", over)
    assert cfg == inner("experiments/quickstart.yaml", over) and cfg.model.dim == 48
    with pytest.raises(ConfigError, match="pass n_words"):
        pw.build_model(pw.load_config(None, [*DEBUG_MODEL, "data.mode=mixed"]))
    model = pw.build_model(cfg, n_words=50)
    assert isinstance(model, PixWordModel) and model.word_embed.num_embeddings == 50
    assert model.head.out_features == 50 + 64  # classes: 50 words, then the 64 colors of fold 64
    img = pw.build_model(pw.load_config(None, [*DEBUG_MODEL, "data.mode=image_only"]))
    assert img.vocab.n_words == 6
    with pytest.raises(ConfigError, match="palette"):
        tiny = [o for o in DEBUG_MODEL if not o.startswith("model.folding.")]
        pw.build_model(pw.load_config(None, [*tiny, "model.folding.name=palette"]), n_words=6)
    a, b = pw.load_model(ckpt), pw.load_model(out)
    assert not a.training and not b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(weights[f"model.{k}"], v) for k, v in sb.items())
    # read_image + Run.image: the windows of an image file, as the checkpoint's run builds them
    import io

    from PIL import Image

    Image.new("RGB", (12, 5), (200, 30, 90)).save(tmp_path / "red.bmp")
    png = pw.read_image(tmp_path / "red.bmp")
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).tobytes() == Image.open(tmp_path / "red.bmp").tobytes()
    wa, wb = pw.load_run(ckpt).image(png, "red"), pw.load_run(out).image(png, "red")
    assert (wa.pix == wb.pix).all() and int(wa.valid.sum()) > 0


def test_a_sharded_fsdp_folder_exports_its_full_weights(glyph_shards, tmp_path):
    """One-process fsdp writes sharded checkpoint folders; the export holds the whole model,
    as `pixword convert-ckpt` gathers it."""
    from safetensors.torch import load_file
    from test_checkpoints import SHORT, in_process_fsdp

    with in_process_fsdp():
        fit(tiny_config(glyph_shards, tmp_path, "trainer.max_steps=2", "trainer.strategy=fsdp", *SHORT))
    sharded = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert sharded.is_dir()
    out = pw.export(sharded, tmp_path / "exp")
    assert main(["convert-ckpt", str(sharded), "--out", str(tmp_path / "single.ckpt")]) == 0
    want = torch.load(tmp_path / "single.ckpt", weights_only=True)["state_dict"]
    got = load_file(out / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((out / "pixword.json").read_text())["global_step"] == 2
