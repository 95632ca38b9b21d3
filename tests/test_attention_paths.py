"""The attention kernels compute the same thing.

The image block's two window kernels (layers.Stack, `window_kernel`): `mask` is the reference
(attention_mask(valid), run by layers.attend: explicit matmuls on CPU for short sequences,
SDPA otherwise); `packed` moves valid pixels to the front of each window and runs SDPA with
is_causal=True (the GPU path). `layers.matmul_attention` (CPU, <= 128 keys) equals SDPA with
the same boolean mask, fully masked query rows and GQA included. On CPU, in float32,
forward outputs at every position something reads and all gradients agree to float rounding
(the same terms summed in another order): rtol 1e-5, atol 1e-6.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_components import N_WORDS, SIZE, TINY, WINDOW, folding_of

from pixword_lit.data.elements import build_sample, collate, image_windows
from pixword_lit.model import layers
from pixword_lit.model.layers import (
    DecoderCache,
    KVCache,
    Stack,
    attention_mask,
    matmul_attention,
    pack_valid_first,
    set_window_kernel,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _stack_cfg():
    return OmegaConf.create({"dim": 32, "n_heads": 4, "n_kv_heads": 2, "norm_eps": 1e-5,
                             "rope_theta": 500000.0, "ffn_multiple_of": 16,
                             "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_context": 8192}})


def _windows():
    """Five 4x4 windows (P = 16): full; bottom row padding (valid prefix); right column
    padding (valid pixels interleaved with pads); bottom-right corner only; fully padded."""
    w = 4
    grid = np.ones((5, w, w), bool)
    grid[1, 3, :] = False
    grid[2, :, 3] = False
    grid[3, 2:, :] = False
    grid[3, :, 2:] = False
    grid[4] = False
    valid = torch.from_numpy(grid.reshape(5, w * w))
    pos = torch.where(valid, valid.long().cumsum(1) - 1 + torch.arange(5)[:, None] * 100, -1)
    return valid, pos


def test_pack_valid_first_is_a_stable_partition():
    valid, _ = _windows()
    order = pack_valid_first(valid)
    for row, idx in zip(valid, order):
        n = int(row.sum())
        assert row[idx[:n]].all() and not row[idx[n:]].any()
        assert (idx[:n].diff() > 0).all() and (idx[n:].diff() > 0).all()  # order kept


def test_stack_packed_equals_mask_forward_and_gradients():
    torch.manual_seed(0)
    ref = Stack(_stack_cfg(), 2, windowed=True)
    fast = copy.deepcopy(ref)
    ref.window_kernel, fast.window_kernel = "mask", "packed"
    valid, pos = _windows()
    x = torch.randn(5, 16, 32)
    w = torch.randn(5, 16, 32)  # a downstream read of valid outputs only
    outs, grads = [], []
    for stack in (ref, fast):
        xi = x.clone().requires_grad_(True)
        h = stack(xi, pos, valid)
        assert torch.isfinite(h).all()  # pad outputs too: 0 * pad output must stay 0
        (h * w * valid[..., None]).sum().backward()
        outs.append(h)
        grads.append([xi.grad] + [p.grad for p in stack.parameters()])
    torch.testing.assert_close(outs[1][valid], outs[0][valid], **TOL)
    for g_fast, g_ref in zip(grads[1], grads[0]):
        # a parameter's gradient sums 80 rows' terms in another order on each path: float32
        # rounding is relative to the largest entries (differences seen: up to 3 ulps of the
        # tensor's largest entry), so atol scales with it; 1e-6 absolute failed at 1.4e-6 on
        # one machine and passed on another
        scale = max(1.0, float(g_ref.abs().max()))
        torch.testing.assert_close(g_fast, g_ref, rtol=TOL["rtol"], atol=TOL["atol"] * scale)
    assert (grads[1][0][~valid] == 0).all()  # no gradient reaches a pad pixel's input


def test_all_valid_rows_give_identical_outputs_everywhere():
    """The dense objective's local decoder: every position valid, packing is the identity."""
    torch.manual_seed(0)
    ref = Stack(_stack_cfg(), 1, windowed=True)
    x, ones = torch.randn(3, 16, 32), torch.ones(3, 16, dtype=torch.bool)
    pos = torch.arange(16).expand(3, 16)
    ref.window_kernel = "mask"
    a = ref(x, pos, ones)
    ref.window_kernel = "packed"
    torch.testing.assert_close(ref(x, pos, ones), a, **TOL)


def test_auto_is_the_mask_on_cpu_and_the_decoder_never_packs():
    s = Stack(_stack_cfg(), 1, windowed=True)
    assert s.window_kernel == "auto" and not s.packed(torch.zeros(1))
    d = Stack(_stack_cfg(), 1)
    d.window_kernel = "packed"
    assert not d.packed(torch.zeros(1))
    with pytest.raises(ValueError):
        set_window_kernel(d, "flex")


def _batch(folding, vocab):
    """A square image (full windows), a landscape one (bottom windows masked, middle ones with
    a pad row: valid prefix) and a portrait one (pad columns: valid pixels interleaved)."""
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((SIZE, SIZE, 3), (3, SIZE, 3),
                                                             (SIZE, 3, 3))]
    samples = [build_sample([np.array([6, 7]), image_windows(im, SIZE, WINDOW, folding, vocab),
                             np.array([9])], vocab, 64) for im in imgs]
    return collate(samples, vocab.pix_pad, WINDOW * WINDOW)


@pytest.mark.parametrize("attn", ["global_conditional", "pooled"])
@pytest.mark.parametrize("objective", ["first_pixel", "dense"])
def test_model_loss_and_gradients_equal_under_both_kernels(attn, objective):
    from pixword_lit.model.pixword import PixWordModel, loss_terms
    from pixword_lit.model.tokens import Vocab
    from pixword_lit.system.config import load_config

    cfg = load_config(None, TINY + [f"model.attention.name={attn}",
                                    f"model.objective.name={objective}"])
    folding = folding_of("uniform")
    vocab = Vocab(N_WORDS, folding.n_pix)
    torch.manual_seed(0)
    ref = PixWordModel(cfg.model, vocab, folding)
    fast = copy.deepcopy(ref)
    set_window_kernel(ref, "mask")
    set_window_kernel(fast, "packed")
    batch = _batch(folding, vocab)
    assert (batch["pix_pos"] < 0).any() and not batch["window_valid"].all()
    results = []
    for model in (ref, fast):
        out = model(batch)
        t = loss_terms(out, batch["targets"], vocab.n_words, model.dense)
        (t.sum / t.n).backward()
        results.append((out.logits, t.sum, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], **TOL)
    torch.testing.assert_close(results[1][1], results[0][1], **TOL)
    for g_fast, g_ref in zip(results[1][2], results[0][2]):
        torch.testing.assert_close(g_fast, g_ref, **TOL)


def _sdpa(q, k, v, mask):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                            enable_gqa=True)


def _masks():
    """attention_mask of the five test windows (fully padded rows: only the diagonal), and a
    generation-shaped mask: 3 new slots over 10 cached ones, two slots invalid."""
    valid, _ = _windows()
    cache = DecoderCache(5, 10, [KVCache(2)])
    cache.extend(torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) > 0.3)
    return [attention_mask(valid), cache.extend(torch.tensor([[True, False, True]] * 5))]


@pytest.mark.parametrize("which", [0, 1])
def test_matmul_attention_equals_sdpa_forward_and_gradients(which):
    mask = _masks()[which]
    t, s = mask.shape[-2:]
    g = torch.Generator().manual_seed(which)
    q, k, v = (torch.randn(5, h, n, 6, generator=g) for h, n in ((4, t), (2, s), (2, s)))
    w = torch.randn(5, 4, t, 6, generator=g)
    outs, grads = [], []
    for fn in (_sdpa, matmul_attention):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out = fn(*leaves, mask)
        (out * w).sum().backward()
        outs.append(out)
        grads.append([x.grad for x in leaves])
    torch.testing.assert_close(outs[1], outs[0], **TOL)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, **TOL)
    # bf16 (autocast's dtype): within bf16 rounding of the float32 result
    low = matmul_attention(*(x.bfloat16() for x in (q, k, v)), mask)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), outs[0], rtol=2e-2, atol=2e-2)


def test_attend_uses_matmuls_for_short_cpu_sequences_in_training_only(monkeypatch):
    calls = []
    monkeypatch.setattr(layers, "matmul_attention",
                        lambda *a: calls.append(a[1].shape[2]) or _sdpa(*a))
    for s in (16, 128, 129):
        q, k = torch.randn(1, 4, s, 6, requires_grad=True), torch.randn(1, 2, s, 6)
        layers.attend(q, k, k, attention_mask(torch.ones(1, s, dtype=torch.bool)))
    layers.attend(q, k, k, "causal")
    assert calls == [16, 128]
    q = q[:, :, :16]
    with torch.no_grad():  # validation, generation: SDPA
        layers.attend(q, k[:, :, :16], k[:, :, :16],
                      attention_mask(torch.ones(1, 16, dtype=torch.bool)))
    assert calls == [16, 128]
    monkeypatch.setattr(layers, "MATMUL_ATTENTION_MAX_KEYS", 0)  # SDPA everywhere
    layers.attend(q, k[:, :, :16], k[:, :, :16], attention_mask(torch.ones(1, 16, dtype=torch.bool)))
    assert calls == [16, 128]


def test_model_logits_and_gradients_equal_with_sdpa_everywhere(monkeypatch):
    """The whole model (image block and decoder) with matmul attention against SDPA only."""
    from pixword_lit.model.pixword import PixWordModel, loss_terms
    from pixword_lit.model.tokens import Vocab
    from pixword_lit.system.config import load_config

    folding = folding_of("uniform")
    vocab = Vocab(N_WORDS, folding.n_pix)
    torch.manual_seed(0)
    model = PixWordModel(load_config(None, TINY).model, vocab, folding)
    batch = _batch(folding, vocab)
    results = []
    for max_keys in (128, 0):
        monkeypatch.setattr(layers, "MATMUL_ATTENTION_MAX_KEYS", max_keys)
        model.zero_grad(set_to_none=True)
        out = model(batch)
        t = loss_terms(out, batch["targets"], vocab.n_words)
        (t.sum / t.n).backward()
        results.append((out.logits, [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, **TOL)
