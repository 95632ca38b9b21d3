"""FLOP counting (pixword_lit.fit.flops) on models whose FLOPs are known by hand, and `pixword
bench` on tiny settings (the measurements themselves are in results/bench/)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_components import N_WORDS, TINY, folding_of, make_batch
from torch import nn

from pixword_lit.fit.flops import count_flops, train_step_flops
from pixword_lit.system.config import DEBUG_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counted_op_names_are_the_profiler_names_of_the_matmuls():
    from pixword_lit.fit.flops import counted_op_names

    names = counted_op_names()
    assert {"aten::mm", "aten::bmm", "aten::addmm",
            "aten::_scaled_dot_product_flash_attention_for_cpu"} <= names
    assert not {"aten::mul", "aten::add", "aten::_softmax", "aten::silu"} & names


def test_linear_stack_flops_by_hand():
    """2*B*in*out forward per layer; backward 2x that, except the first layer, whose input
    needs no gradient (weight gradient only: 1x)."""
    b, dims = 5, [16, 32, 8, 24]
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8, bias=False), nn.Tanh(),
                          nn.Linear(8, 24))
    x = torch.randn(b, 16)
    fwd = [2 * b * i * o for i, o in zip(dims, dims[1:])]
    assert count_flops(lambda: model(x)) == sum(fwd)
    expected = sum(fwd) + fwd[0] + 2 * sum(fwd[1:])
    assert train_step_flops(model, lambda: model(x).square().sum()) == expected
    assert all(p.grad is None for p in model.parameters())  # cleared after counting


@pytest.mark.parametrize("kernel", ["mask", "packed"])
def test_pixword_step_flops_match_the_hand_formula(kernel):
    """global_conditional, first_pixel: every matmul of one step by hand, exactly (tolerance
    0: the counter counts exactly these; norms, RoPE, softmax and the loss are not matmuls).
    Per layer and token, linear multiply-adds dim*(H + 2*Hkv)*hd + H*hd*dim + 3*dim*hidden;
    attention 2*2*H*T*T*hd forward per sequence (counted dense); backward: linear 2x,
    attention 2x where it runs as explicit matmuls (CPU, short sequences: both operands'
    gradients of q@k^T and p@v), 2.5x in the fused kernels (SDPA; the packed windows), which
    recompute the scores."""
    from pixword_lit.model import layers
    from pixword_lit.model.layers import ffn_hidden, set_window_kernel
    from pixword_lit.model.pixword import PixWordModel, loss_terms
    from pixword_lit.model.tokens import Vocab
    from pixword_lit.system.config import load_config

    cfg = load_config(None, TINY).model
    folding = folding_of("uniform")
    vocab = Vocab(N_WORDS, folding.n_pix)
    model = PixWordModel(cfg, vocab, folding)
    set_window_kernel(model, kernel)
    batch = make_batch(folding, vocab)

    def loss():
        t = loss_terms(model(batch), batch["targets"], vocab.n_words)
        return t.sum / t.n

    d, h, hkv = cfg.dim, cfg.n_heads, cfg.n_kv_heads
    hd, hidden = d // h, ffn_hidden(cfg.dim, cfg.ffn_multiple_of)
    per_token = d * (h + 2 * hkv) * hd + h * hd * d + 3 * d * hidden  # multiply-adds
    n_win, p = int(batch["window_valid"].sum()), cfg.window_size**2
    b, t = batch["input_ids"].shape
    linear = 2 * (per_token * (n_win * p * cfg.image_layers + b * t * cfg.decoder_layers)
                  + b * t * d * vocab.n_classes)
    image = 4 * h * hd * n_win * p * p * cfg.image_layers
    decoder = 4 * h * hd * b * t * t * cfg.decoder_layers
    assert max(p, t) <= layers.MATMUL_ATTENTION_MAX_KEYS  # CPU: matmuls, except packed (SDPA)
    image_factor = 3.5 if kernel == "packed" else 3
    assert train_step_flops(model, loss) == 3 * linear + image_factor * image + 3 * decoder


def _tiny(shards):
    return [*DEBUG_MODEL, f"data.train={shards}/train", f"data.val={shards}/val",
            "data.batch_size=2", "data.num_workers=0"]


@pytest.mark.slow
def test_bench_functions_on_a_tiny_model(glyph_shards):
    from pixword_lit.bench import training as bt

    over, cfg = _tiny(glyph_shards), "experiments/quickstart.yaml"
    (u,) = bt.utilization(cfg, over, sizes=["quickstart"], dtypes=["fp32"], n_batches=2,
                          compiled=())
    assert u["GFLOP_per_step"] > 0 and 0 < u["utilization_pct"] < 100 and u["step_s"] > 0
    # the ceiling times only the counted ops: on a tiny model most of a step is everything else
    # (ceiling > utilization would follow from this by definition: no separate check)
    assert 0 < u["matmul_s"] < u["step_s"]
    bare, fit = bt.overhead(cfg, over, n_batches=2, rounds=1)
    assert bare["step_s"] > 0 and fit["step_s"] > 0 and fit["ratio_to_bare"] > 0
    (d,) = bt.data(cfg, over, n_batches=3, workers=[1], consume_step_s=u["step_s"])
    # ratio is rounded to 0.1, the rates to 0.1 batches/s and 0.1 ms
    assert d["ratio"] == pytest.approx(d["loader_batches_per_s"] * u["step_s"], rel=0.05, abs=0.06)
    rows = bt.scaling(cfg, over, image_sizes=(16,), n_batches=1, batch_size=2)
    assert [r["variant"] for r in rows] == list(bt.VARIANTS)
    assert all(r["us_per_pixel"] > 0 and r["pixels_per_step"] > 0 for r in rows)
    # every op of the step (top large): which ops lead by self time depends on the machine's
    # load (a busy 2-core machine once had no matmul in the top 5); the matmuls must be there
    prof = bt.profile(cfg, over, n_batches=1, top=10_000)
    assert 5 < len(prof) < 10_000  # each share rounded to 0.1: the sum is 100 to their rounding
    assert abs(sum(r["pct"] for r in prof) - 100) <= 0.05 * len(prof) + 1e-6
    assert [r["pct"] for r in prof] == sorted((r["pct"] for r in prof), reverse=True)
    assert any(r["op"] in ("aten::mm", "aten::addmm", "aten::bmm") for r in prof)
    assert len(bt.profile(cfg, over, n_batches=1, top=3)) == 3  # top cuts the list


def test_bench_cli_writes_tables_with_provenance(glyph_shards, tmp_path):
    from pixword_lit.cli import main

    sets = [x for s in _tiny(glyph_shards) for x in ("--set", s)]
    assert main(["bench", "data", *sets, "--threads", "1", "--out", str(tmp_path),
                 "--allow-dirty"]) == 0
    md = (tmp_path / "data.md").read_text()
    assert "pixword bench data --config experiments/quickstart.yaml" in md
    assert "at commit" in md and "torch 2" in md and "load average" in md
    assert (tmp_path / "data.csv").read_text().startswith("num_workers,")


def _compile_works() -> bool:
    try:
        return float(torch.compile(lambda x: x * 2)(torch.ones(1))) == 2.0
    except Exception:  # no C++ compiler, unsupported platform
        return False


@pytest.mark.slow
def test_compiled_model_loss_and_gradients_equal_eager():
    """model.compile: true compiles each block in place: the same parameters (names, values)
    and the same loss and gradients as eager, to float rounding."""
    if not _compile_works():
        pytest.skip("torch.compile is not available here")
    from pixword_lit.model.pixword import PixWordModel, loss_terms
    from pixword_lit.model.tokens import Vocab
    from pixword_lit.system.config import load_config

    folding = folding_of("uniform")
    vocab = Vocab(N_WORDS, folding.n_pix)
    batch = make_batch(folding, vocab)
    out = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        model = PixWordModel(load_config(None, [*TINY, f"model.compile={flag}"]).model, vocab, folding)
        t = loss_terms(model(batch), batch["targets"], vocab.n_words)
        (t.sum / t.n).backward()
        out.append((float(t.sum / t.n), model.state_dict(),
                    {k: p.grad for k, p in model.named_parameters()}))
    (l0, sd0, g0), (l1, sd1, g1) = out
    assert list(sd0) == list(sd1)
    assert l1 == pytest.approx(l0, rel=1e-5)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_bench_gpu_script_parses_and_its_bench_runs_on_cpu(glyph_shards, tmp_path):
    """experiments/bench_gpu.sh: bash syntax, and `bench paper` (what it runs) on a tiny
    override of the paper config, on CPU: both window kernels train to the same loss (to
    bf16 rounding: on CPU the `mask` path runs explicit matmuls, which round the attention
    probabilities to bf16, the packed path SDPA's fused kernel; fp32 equality of the paths is
    tested to 1e-5 in test_attention_paths) and the loss agreement rows are there."""
    import subprocess

    from pixword_lit.bench import gpu as bench_gpu

    subprocess.run(["bash", "-n", "experiments/bench_gpu.sh"], check=True)
    over = [*_tiny(glyph_shards), "data.small_images=upscale", "data.mode=image_only"]
    rows = bench_gpu.paper("experiments/paper_image_only.yaml", over, n_batches=1, device="cpu",
                           peak_n=256)  # the CPU's measured peak: a small matmul will do here
    packed, mask, fp32, bf16 = rows
    assert packed["loss"] == pytest.approx(mask["loss"], rel=1e-3)
    assert packed["MFU_pct"] > 0 and packed["GFLOP_per_step"] > 0
    # the matmul time is profiled in passes of its own, the step time measured apart: on a
    # busy machine either may be the slower, so only their scale is checked (a unit slip fails)
    assert 0 < packed["matmul_s"] < 3 * packed["step_s"] and packed["ceiling_pct"] > 0
    assert fp32["rel_diff"] == 0.0 and bf16["rel_diff"] < 1e-2


_CONFIG = "experiments/quickstart.yaml"


def test_an_arm_builds_and_steps_the_model_without_lightning(glyph_shards):
    """The bare step (an ab arm, a fresh process each) builds its model through system/build.py
    without loading Lightning (~4 s of start-up per arm on a 2-core machine)."""
    import subprocess
    import sys

    args = json.dumps([_CONFIG, _tiny(glyph_shards), None, "fp32", 1, 1])
    code = ("import json, sys; from pixword_lit.bench.ab import arm; r = arm(*json.loads(sys.argv[1])); "
            "print(r['step_s'] > 0, sorted({m.split('.')[0] for m in sys.modules} & "
            "{'lightning', 'pytorch_lightning', 'torchmetrics'}))")
    res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "True []"


@pytest.mark.slow
def test_bench_ab_runs_each_arm_in_its_own_process(glyph_shards, monkeypatch):
    """`pixword bench ab` on a tiny model: both arms run (fresh processes, the malloc arm with
    glibc's defaults), every pair is reported, the ratio is of the best times."""
    from pixword_lit.bench import ab as ab_mod

    arms, run_arm = {}, ab_mod._run_arm  # what each arm's process reported, by its change

    def recorded(config, overrides, change, *rest):
        arms[change] = run_arm(config, overrides, change, *rest)
        return arms[change]

    monkeypatch.setattr(ab_mod, "_run_arm", recorded)
    (row,) = ab_mod.ab(_CONFIG, _tiny(glyph_shards),
                       changes=("malloc_defaults",), pairs=1, n_batches=1, threads=1)
    base = [float(x) for x in row["base_step_s"].split(" / ")]
    changed = [float(x) for x in row["changed_step_s"].split(" / ")]
    assert len(base) == len(changed) == 1 and min(base) > 0
    assert row["changed_over_base"] == pytest.approx(min(changed) / min(base), abs=2e-3)
    assert (float(row["base_step_s"]), float(row["changed_step_s"])) == pytest.approx(
        (arms[None]["step_s"], arms["malloc_defaults"]["step_s"]), rel=1e-3)
    # each arm is a process of its own, with its setting and only that one
    recorded(_CONFIG, _tiny(glyph_shards), "sdpa_attention", "fp32", 1, 1)
    pids = {a["pid"] for a in arms.values()}
    assert len(pids) == 3 and os.getpid() not in pids
    assert [arms[c]["malloc_tuned"] for c in arms] == [True, False, True]
    assert [arms[c]["matmul_attention_max_keys"] == 0 for c in arms] == [False, False, True]
