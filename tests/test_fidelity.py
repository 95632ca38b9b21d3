"""Training as the authors' code trains (issue 16): one token mean over the global batch,
skipped images, initialization, optimizer, resize filter and rounding, and the fidelity table of
experiments/README.md checked against the paper configs."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fidelity_batches import (
    batch_of,
    config,
    make_module,
    placeholders,
    samples,
    train,
    whole_batches,
)
from omegaconf import OmegaConf
from PIL import Image

from data_prep.images import build_images
from pixword_lit.data.elements import resize_longer_side
from pixword_lit.data.shards import resolve_shards
from pixword_lit.data.stream import SampleBuilder, ShardStream
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.pixword import PixWordModel, loss_terms
from pixword_lit.model.tokens import Vocab
from pixword_lit.system.config import REPO_ROOT, ConfigError, load_config

TESTS = Path(__file__).resolve().parent


def _close(a: list, b: list, rtol=1e-4, atol=1e-7):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=rtol, atol=atol), float((x - y).abs().max())


def _direct_grads(cfg, batch) -> list[torch.Tensor]:
    """The definition: d/dparams of (summed cross-entropy / scored targets) of the batch."""
    module = make_module(cfg)
    t = loss_terms(module.model(batch), batch["targets"], module.vocab.n_words)
    (t.sum / t.n).backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


# ---- loss weighting -------------------------------------------------------------------

def _long_short(steps: int):
    longs = [samples(10 + i, 4, True) for i in range(steps)]
    shorts = [samples(20 + i, 4, False) for i in range(steps)]  # ~20x fewer targets
    eights = [batch_of(longs[i] + shorts[i], i) for i in range(steps)]
    fours = [b for i in range(steps) for b in (batch_of(longs[i], 2 * i), batch_of(shorts[i], 2 * i + 1))]
    return eights, fours


def test_accumulation_equals_one_big_batch():
    """1 x batch 8 and 1 x batch 4 with accumulate_grad_batches=2 (micro-batches with very
    different target counts) use the same gradients and end with the same parameters."""
    cfg = config()
    eights, fours = _long_short(3)
    one, _ = train(cfg, [eights], steps=3)
    acc, _ = train(cfg, [fours], steps=3, accumulate=2)
    _close(one.grads[0], _direct_grads(cfg, eights[0]))  # the token mean over all 8 samples
    for k in range(3):
        _close(acc.grads[k], one.grads[k])
    _close(acc.params[-1], one.params[-1], atol=1e-5)
    assert not torch.allclose(one.params[-1][0], make_module(cfg).model.word_embed.weight)  # it trained


def test_accumulation_rescales_before_clipping():
    """Clipping sees the window's token-mean gradient, not the provisional one."""
    cfg = config()
    eights, fours = _long_short(1)
    clip = 1e-3
    one, _ = train(cfg, [eights], steps=1, clip=clip)
    acc, _ = train(cfg, [fours], steps=1, accumulate=2, clip=clip)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in one.grads[0]]))
    assert float(norm) == pytest.approx(clip, rel=1e-3)  # clipping was active
    _close(acc.grads[0], one.grads[0])


@pytest.mark.multiproc
def test_two_processes_equal_one_process(tmp_path):
    """Two gloo processes, each given one half of a fixed global batch (step 1: halves whose
    target counts differ ~20x; step 2: one half only a placeholder), use the gradients and
    reach the parameters that one process gets from the whole batches."""
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run([sys.executable, str(TESTS / "fidelity_ddp_worker.py"), str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    ddp = torch.load(out, weights_only=True)
    one, _ = train(config("trainer.max_steps=2"), [whole_batches()], steps=2)
    assert len(ddp["grads"]) == len(one.grads) == 2
    for k in range(2):
        _close(ddp["grads"][k], one.grads[k])
        _close(ddp["params"][k], one.params[k], atol=1e-5)


def test_placeholders_do_not_dilute_the_gradient():
    cfg = config()
    real = samples(5, 3, True) + samples(6, 2, False)
    alone, _ = train(cfg, [[batch_of(real)]], steps=1)
    padded, _ = train(cfg, [[batch_of(real + placeholders(3))]], steps=1)
    _close(padded.grads[0], alone.grads[0])


def test_skipped_small_images_leave_no_trace(tmp_path):
    """A shard where half the images are below image_size, under small_images: skip, gives
    the batch (and gradient) of the shard without them: they are dropped before batching."""
    rng = np.random.default_rng(0)
    every, big_only = tmp_path / "every", tmp_path / "big"
    every.mkdir()
    big_only.mkdir()
    for i in range(8):
        small = i % 2 == 1
        size = (10, 7) if small else (int(rng.integers(16, 40)), int(rng.integers(8, 40)))
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        img.save(every / f"img{i}.png")
        if not small:
            img.save(big_only / f"img{i}.png")
    cfg = config("data.mode=image_only", "data.small_images=skip", "data.batch_size=8")
    batches = []
    for src in (every, big_only):
        build_images(src, tmp_path / f"shards_{src.name}", val_fraction=0.0)
        train_dir = str(tmp_path / f"shards_{src.name}" / "train")
        shards = resolve_shards(train_dir, None, "image_only", "data.train")
        fold = UniformFolding(64)
        builder = SampleBuilder(cfg.model, cfg.data, Vocab(cfg.model.vocab_size, fold.n_pix), fold)
        batches.append(list(ShardStream(shards, builder, 8, 0, False)))
    (with_small,), (without,) = batches
    assert int(with_small["n_skipped"]) == 4 and int(without["n_skipped"]) == 0
    assert with_small["targets"].shape[0] == 4  # dropped, no placeholder rows
    assert torch.equal(with_small["targets"], without["targets"])
    got, _ = train(cfg, [[with_small]], steps=1)
    _close(got.grads[0], _direct_grads(cfg, without))


# ---- initialization and optimizer ---------------------------------------------------

def _model(init: str):
    cfg = load_config(None, ["model.dim=128", "model.n_heads=4", "model.n_kv_heads=2",
                             "model.image_layers=1", "model.decoder_layers=1", "model.image_size=16",
                             "model.window_size=4", "model.folding.factor=16", "model.vocab_size=64",
                             f"model.init={init}"])
    fold = UniformFolding(16)
    torch.manual_seed(0)
    return PixWordModel(cfg.model, Vocab(64, fold.n_pix), fold)


def test_paper_init_is_the_authors_scheme():
    """paper: tables xavier_normal (std sqrt(2 / (rows + dim))), linear layers PyTorch's
    uniform(+-1/sqrt(fan_in)), norms 1; normal: N(0, 0.02) everywhere."""
    m = _model("paper")
    for table in (m.word_embed.weight, m.pixels.embed.table.weight):
        want = math.sqrt(2 / sum(table.shape))
        assert float(table.detach().std()) == pytest.approx(want, rel=0.1)
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert m.head in linears and m.decoder.layers[0].ffn.w2 in linears
    for lin in linears:
        bound = 1 / math.sqrt(lin.in_features)
        w = lin.weight.detach()
        assert float(w.abs().max()) <= bound
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
    norms = [p for n, p in m.named_parameters() if p.dim() == 1]
    assert norms and all(bool((p == 1).all()) for p in norms)
    n = _model("normal")
    for w in (n.word_embed, n.pixels.embed.table, n.head, n.decoder.layers[0].ffn.w2):
        assert float(w.weight.detach().std()) == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("decay_norms", [False, True])
def test_decay_norms(decay_norms):
    module = make_module(config(f"optim.decay_norms={decay_norms}", "optim.betas=[0.9,0.999]"))
    opt = module.configure_optimizers()["optimizer"]
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay) == len(list(module.parameters()))
    for p in module.parameters():
        want = 0.01 if (p.dim() >= 2 or decay_norms) else 0.0
        assert decay[id(p)] == want
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)


def test_max_steps_minus_one_trains_one_epoch_with_the_whole_cosine():
    cfg = config("trainer.max_steps=-1", "trainer.max_epochs=1")
    eights, _ = _long_short(3)
    _, trainer = train(cfg, [eights], steps=-1, max_epochs=1)
    assert trainer.global_step == 3
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio)  # the cosine ended with the epoch
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        config("trainer.max_steps=-1", "trainer.max_epochs=-1")


@pytest.mark.parametrize("override,key", [
    ("model.init=xavier", "model.init"),
    ("data.resample=bilinear_aa", "data.resample"),
    ("data.short_side_rounding=round", "data.short_side_rounding"),
])
def test_new_keys_are_checked(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        config(override)


# ---- resize ---------------------------------------------------------------------------

def test_authors_short_side_rounding():
    """int((short / long) * S) is 1 px below int(S * short / long) for some sizes."""
    size = 224
    pairs = [(lg, sh) for lg in range(225, 800) for sh in range(1, lg)
             if int(sh / lg * size) != int(size * sh / lg)]
    assert pairs
    for lg, sh in pairs[:3]:
        for w, h in ((lg, sh), (sh, lg)):
            img = Image.new("RGB", (w, h))
            floor = resize_longer_side(img, size, "skip", "bilinear_antialias").size
            authors = resize_longer_side(img, size, "skip", "bilinear_antialias", "authors").size
            assert max(floor) == max(authors) == size
            assert min(floor) == size * sh // lg and min(authors) == min(floor) - 1


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) antialiased bilinear weights: a triangle filter centred on each output
    pixel in input coordinates, its half-width stretched by the downscale factor (>= 1)."""
    scale = n_in / n_out
    width = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    x = np.arange(n_in) + 0.5  # input pixel centres
    w = np.clip(1 - np.abs(x[None, :] - centers[:, None]) / width, 0, None)
    return w / w.sum(1, keepdims=True)


def _reference_resize(rgb: np.ndarray, w_out: int, h_out: int, horizontal_first: bool) -> np.ndarray:
    """Separable, rounded to 8 bits between the two passes as PIL does; PIL picks the order
    of the passes itself (Pillow 13 goes vertical first for some shapes), so both are made."""
    def horizontal(x):
        return _round8(np.einsum("ox,hxc->hoc", _triangle_weights(x.shape[1], w_out), x))

    def vertical(x):
        return _round8(np.einsum("oy,ywc->owc", _triangle_weights(x.shape[0], h_out), x))

    x = rgb.astype(np.float64)
    x = vertical(horizontal(x)) if horizontal_first else horizontal(vertical(x))
    return x.astype(np.int64)


def _round8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255)


@pytest.mark.parametrize("w,h,size", [(240, 160, 224), (500, 331, 224), (37, 90, 16), (10, 7, 16)])
def test_bilinear_antialias_matches_an_independent_reference(w, h, size):
    """torchvision's Resize on a PIL image (the authors' loader) is PIL's bilinear resize;
    torchvision itself is not a test dependency (its wheels pin a torch other than the one
    pinned here), so the reference is the filter written out in numpy."""
    rng = np.random.default_rng(w * h)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    rgb = np.clip(smooth + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    out = np.asarray(resize_longer_side(img, size, "upscale", "bilinear_antialias"), dtype=np.int64)
    assert max(out.shape[:2]) == size
    refs = [_reference_resize(rgb, out.shape[1], out.shape[0], first) for first in (True, False)]
    ref = min(refs, key=lambda r: np.abs(out - r).mean())
    diff = np.abs(out - ref)
    # PIL's fixed-point weights round the odd pixel the other way
    assert diff.max() <= 1 and diff.mean() < 0.05
    bicubic = np.asarray(resize_longer_side(img, size, "upscale", "bicubic"), dtype=np.int64)
    assert np.abs(bicubic - ref).max() > 1  # the reference tells the filters apart


# ---- the fidelity table (experiments/README.md) ----------------------------------------------------

def _fidelity_rows() -> dict[str, str]:
    text = (REPO_ROOT / "experiments" / "README.md").read_text()
    start, end = text.index("<!-- fidelity:start -->"), text.index("<!-- fidelity:end -->")
    rows = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([a-z_]+(?:\.[a-z_]+)+)`", cells[0]) if len(cells) >= 4 else None
        if m:
            rows[m.group(1)] = cells[1].strip("`")
    return rows


def _leaf_keys(node, prefix="") -> list[str]:
    if not isinstance(node, dict) or prefix.startswith(("model.folding", "model.rope_scaling")):
        return [prefix.rstrip(".")]
    return [k for key, v in node.items() for k in _leaf_keys(v, f"{prefix}{key}.")]


def test_fidelity_table_matches_the_paper_configs():
    rows = _fidelity_rows()
    names = ("paper_image_only", "paper_mixed")
    cfgs = {n: load_config(REPO_ROOT / "experiments" / f"{n}.yaml") for n in names}
    for name in cfgs:  # every setting the paper configs make has a row
        raw = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "experiments" / f"{name}.yaml"))
        raw.pop("defaults", None)
        missing = [k for k in _leaf_keys(raw) if k not in rows]
        assert not missing, f"experiments/README.md fidelity table lacks {missing}"
    for key, cell in rows.items():
        values = cell.split(" / ") if " / " in cell else [cell, cell]
        for (name, cfg), want in zip(cfgs.items(), values):
            got = OmegaConf.select(cfg, key, throw_on_missing=True)
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert got == _yaml(want), (name, key, got, want)


def _yaml(text: str):
    return OmegaConf.to_container(OmegaConf.create(f"v: {text}"))["v"]

