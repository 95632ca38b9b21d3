"""The decoder against an independent implementation of the same architecture: Hugging Face
`transformers`' Llama (built from a config, nothing downloaded), as litgpt's
test_against_hf_llama_2_and_3 does. `make install` puts transformers beside the venv, in
<venv>/reference, which only this test puts on sys.path (pyproject.toml's `reference` extra says
why); installed in the venv instead (`pip install -e '.[reference]'`) it is found there too.

pixword's decoder (spec section 4: pre-norm RMSNorm blocks, grouped-query attention, SwiGLU,
RoPE with LLaMA-3.1 frequency scaling, an untied head) is Llama's. Its RoPE rotates the two
halves of each head (x[:hd/2], x[hd/2:]) as HF's `rotate_half` does, so q/k weights copy
over unpermuted (Meta's original code pairs adjacent dims (2i, 2i+1); converting such a
checkpoint would permute the q/k rows, as HF's conversion script does).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixword_lit.data.elements import build_sample, collate
from pixword_lit.model.components.folding import UniformFolding
from pixword_lit.model.layers import ffn_hidden
from pixword_lit.model.pixword import PixWordModel
from pixword_lit.model.tokens import Vocab
from pixword_lit.system.config import DEBUG_MODEL, load_config

sys.path.append(str(Path(sys.prefix) / "reference"))
transformers = pytest.importorskip(
    "transformers", reason="make install puts it in <venv>/reference (pip install -e '.[reference]')")
LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread
N_WORDS = 40


def pixword_model() -> PixWordModel:
    cfg = load_config(None, DEBUG_MODEL).model  # 2 decoder layers, 4 heads, 2 kv heads
    assert cfg.decoder_layers == 2 and cfg.n_kv_heads < cfg.n_heads  # GQA
    folding = UniformFolding(cfg.folding.factor)
    torch.manual_seed(0)
    model = PixWordModel(cfg, Vocab(N_WORDS, folding.n_pix), folding).eval()
    with torch.no_grad():  # weights far from the 0.02 init (norms away from 1), so that
        # attention is far from uniform and a wrong rotation or head mapping shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 1.0 if "embed" in name else 0.3)
    return model


def hf_copy(model: PixWordModel) -> LlamaForCausalLM:
    """The same weights in transformers' Llama (vocabulary = pixword's output classes; the
    embedding rows past the word ids are never read)."""
    m, rs = model.cfg, model.cfg.rope_scaling
    config = LlamaConfig(
        vocab_size=model.vocab.n_classes, hidden_size=m.dim,
        intermediate_size=ffn_hidden(m.dim, m.ffn_multiple_of), num_hidden_layers=m.decoder_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, rms_norm_eps=m.norm_eps,
        max_position_embeddings=16 * rs.original_context, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": m.rope_theta, "factor": rs.factor,
                         "low_freq_factor": rs.low_freq_factor, "high_freq_factor": rs.high_freq_factor,
                         "original_max_position_embeddings": rs.original_context},
    )
    hf = LlamaForCausalLM(config).eval()
    sd = {"model.norm.weight": model.norm.weight, "lm_head.weight": model.head.weight}
    names = {"attn_norm": "input_layernorm", "attn.wq": "self_attn.q_proj",
             "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj",
             "attn.wo": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn.w1": "mlp.gate_proj", "ffn.w3": "mlp.up_proj", "ffn.w2": "mlp.down_proj"}
    for i in range(m.decoder_layers):
        for ours, theirs in names.items():
            sd[f"model.layers.{i}.{theirs}.weight"] = model.decoder.get_submodule(
                f"layers.{i}.{ours}").weight
    embed = torch.zeros(model.vocab.n_classes, m.dim)
    embed[: model.vocab.n_words] = model.word_embed.weight
    sd["model.embed_tokens.weight"] = embed
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and all("rotary_emb" in k for k in missing), (missing, unexpected)
    return hf


def word_batch(t: int = 24):
    """Two text-only samples of equal length (no padding), through pixword's own collate."""
    rng = np.random.default_rng(0)
    samples = [build_sample([rng.integers(6, N_WORDS, t - 1)], Vocab(N_WORDS, 1), 64) for _ in range(2)]
    return collate(samples, 0, 16)


def test_whole_model_on_words_matches_hf_llama():
    """Embedding -> 2 decoder layers -> norm -> head: equal logits at every position."""
    model = pixword_model()
    hf = hf_copy(model)
    batch = word_batch()
    assert batch["elem_valid"].all() and batch["positions"][0].tolist() == list(range(24))
    with torch.no_grad():
        ours = model(batch).logits  # (B, T, C)
        theirs = hf(input_ids=batch["input_ids"], position_ids=batch["positions"]).logits
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("offset", [0, 3000, 20000])
def test_decoder_stack_at_explicit_positions_matches_hf_llama(offset):
    """The decoder stack alone, at explicit RoPE positions, up to past LLaMA-3.1's original
    context (8192), where the frequency scaling decides the rotations."""
    model = pixword_model()
    hf = hf_copy(model)
    torch.manual_seed(1)
    x = torch.randn(2, 24, model.cfg.dim)
    positions = offset + torch.arange(24).expand(2, 24) * torch.tensor([[1], [7]])  # gaps in sample 1
    with torch.no_grad():
        ours = model.head(model.norm(model.decoder(x, positions, torch.ones(2, 24, dtype=torch.bool))))
        theirs = hf(inputs_embeds=x, position_ids=positions).logits
    # logits reach ~9; float32 angles at positions ~2e4 differ in the last bits (pixword draws
    # its frequencies in float64, HF in float32): 1e-4. A wrong rotation, scaling or head
    # mapping moves them by ~0.5
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
