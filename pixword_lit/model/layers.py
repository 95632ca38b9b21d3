"""LLaMA-style building blocks shared by the image block and the decoder (spec section 4).

RMSNorm, rotary embedding with LLaMA-3.1 frequency scaling applied at arbitrary integer
positions (padding and masked elements get no position), grouped-query attention on
scaled_dot_product_attention, SwiGLU, and the pre-norm block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_inv_freq(head_dim: int, theta: float, scaling=None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), with LLaMA-3.1 scaling when `scaling` is given."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is None:
        return inv.float()
    factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    old = scaling.original_context
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = old / low, old / high
    smooth = (old / wavelen - low) / (high - low)
    mid = (1 - smooth) * inv / factor + smooth * inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, mid)  # long wavelengths: scaled
    return torch.where(wavelen < high_wavelen, inv, scaled).float()  # short: kept


class Rope(nn.Module):
    """cos/sin tables computed from explicit positions; position -1 (masked) is mapped to 0."""

    def __init__(self, head_dim: int, theta: float, scaling=None):
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta, scaling), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions (N, T) -> cos, sin (N, 1, T, head_dim/2), broadcast over heads
        angles = positions.clamp(min=0).float()[..., None] * self.inv_freq
        return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (N, H, T, hd); rotate pairs (first half, second half) of the head dimension. The
    # authors (like Meta's LLaMA code) rotate adjacent pairs (2i, 2i+1) as complex numbers:
    # the same rotations up to a fixed permutation of the q/k projection rows, so the two
    # parameterize the same models (a permuted checkpoint converts exactly)
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Causal mask over keys that are valid; (N, T) bool -> (N, 1, T, T) bool, True = attend.

    The diagonal is always allowed so that a fully masked row (padding) stays finite; such
    rows are never read.
    """
    t = valid.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | eye)[:, None]


# On CPU, training (autograd recording) attention over at most this many keys runs as explicit
# matmuls (`matmul_attention`) instead of SDPA's CPU flash kernel, whose blocking is made for
# long sequences and whose backward is slow for short ones, in bf16 most of all (measured by
# `pixword bench ab`; results/README.md, "Speed"). Longer sequences
# keep SDPA: the explicit (T, T) scores grow quadratically in memory traffic. Without autograd
# (validation, generation, sampling) SDPA runs: one call per layer, which decoding one token
# at a time needs (its cost is per-op overhead). Setting it to 0 turns the matmuls off.
MATMUL_ATTENTION_MAX_KEYS = 128


def attend(q, k, v, mask):
    """Grouped-query attention of q (N, H, T, hd) over k, v (N, Hkv, S, hd). `mask`: (N, 1, T, S)
    bool, True = attend, or the string "causal" (packed windows: is_causal, no mask tensor)."""
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              enable_gqa=q.shape[1] != k.shape[1])
    if (q.device.type == "cpu" and k.shape[2] <= MATMUL_ATTENTION_MAX_KEYS
            and torch.is_grad_enabled() and q.requires_grad):
        return matmul_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                          enable_gqa=q.shape[1] != k.shape[1])


def matmul_attention(q, k, v, mask):
    """SDPA's math for a boolean mask with every row allowing some key, as batched matmuls:
    softmax(q k^T / sqrt(hd), masked) v. The g = H / Hkv query heads that share a kv head are
    stacked along T (one (g*T, hd) x (hd, S) matmul per kv head, no repeated k/v); the softmax
    runs in float32 (as the fused kernels accumulate), its probabilities then in v's dtype."""
    n, h, t, hd = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = h // hkv
    q = (q * hd**-0.5).reshape(n, hkv, g * t, hd)
    scores = torch.matmul(q, k.transpose(-1, -2)).view(n, hkv, g, t, s)
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))  # (N, 1, 1, T, S) broadcast
    if scores.dtype == torch.float32:
        probs = torch.softmax(scores, dim=-1)
    else:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs.view(n, hkv, g * t, s), v).view(n, h, t, hd)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, start: int = 0):
        """`mask`: (N, 1, T, T) bool, or the string "causal" (packed windows, no mask tensor)."""
        n, t, _ = x.shape
        q = self.wq(x).view(n, t, self.n_heads, self.head_dim).transpose(1, 2)  # (N, H, T, hd)
        k = self.wk(x).view(n, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (N, Hkv, T, hd)
        v = self.wv(x).view(n, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # generation: keys/values of all slots so far, (N, Hkv, start+T, hd)
            k, v = cache.write(start, k, v)
        y = attend(q, k, v, mask)
        return self.wo(y.transpose(1, 2).reshape(n, t, self.n_heads * self.head_dim))  # (N, T, dim)


def ffn_hidden(dim: int, multiple_of: int) -> int:
    """round_up(1.5 * 2/3 * 3 * dim, multiple_of) = 3*dim rounded up (spec section 4)."""
    hidden = int(1.5 * (2 * (3 * dim) / 3))
    return multiple_of * math.ceil(hidden / multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.dim, ffn_hidden(cfg.dim, cfg.ffn_multiple_of))

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, start: int = 0):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, start)
        return x + self.ffn(self.ffn_norm(x))


WINDOW_KERNELS = ("auto", "mask", "packed")


def pack_valid_first(valid: torch.Tensor) -> torch.Tensor:
    """(N, T) bool -> (N, T) index that moves each row's valid elements to the front, in order
    (a stable partition), pads after them. Gathering x with it makes every valid element's
    causal prefix exactly the valid elements before it: `is_causal=True` then computes
    `attention_mask(valid)`'s attention for every valid element, with no mask tensor."""
    return torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (N, T, ...) reordered along T by index (N, T)."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class Stack(nn.Module):
    """Blocks sharing one RoPE table; input (N, T, dim), positions (N, T), valid (N, T).

    `windowed=True` (the image block: every row is one window whose outputs are read only at
    valid pixels) allows a second attention kernel, picked by `window_kernel`:

    - `mask` (the reference; the default on CPU): SDPA with `attention_mask(valid)`, a dense
      (N, 1, T, T) boolean mask. On a GPU a mask rules out the flash kernel.
    - `packed` (the default on CUDA, `auto`): valid pixels are moved to the front of their
      window once per stack (`pack_valid_first`, a stable partition; RoPE travels with the
      pixels as `positions`), every layer runs SDPA with `is_causal=True` and no mask (flash /
      cuDNN / memory-efficient kernels on a GPU), and the outputs are put back in place.
      A valid pixel then attends to exactly the valid pixels before it, as with the mask, so
      valid outputs are equal (to float rounding: the same terms, summed in another order).
      Pad pixels (packed after the valid ones) see different keys than under the mask, so
      their outputs differ; nothing reads them: the image block's summary is taken at a
      valid pixel (global_conditional) or as a mean weighted 0 at pads (pooled), pads are
      never keys of valid pixels, and they stay finite (each attends at least to itself), so
      0 * output is 0 in the forward pass and no gradient reaches them.
      Why not FlexAttention with a BlockMask: it is fast only under torch.compile (eagerly it
      is a reference implementation that materializes the scores, with a warning), needs a
      BlockMask built per batch from `valid` (create_block_mask), and at its 128-token block
      granularity a 256-pixel window skips only the causal blocks anyway; packing reaches
      the stock causal kernels with two gathers per stack, in eager mode, on any GPU.
    """

    def __init__(self, cfg, n_layers: int, windowed: bool = False):
        super().__init__()
        self.rope = Rope(cfg.dim // cfg.n_heads, cfg.rope_theta, cfg.rope_scaling)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(n_layers))
        self.windowed = windowed
        self.window_kernel = "auto"  # see WINDOW_KERNELS; set_window_kernel sets a whole model

    def packed(self, x: torch.Tensor) -> bool:
        if not self.windowed or self.window_kernel == "mask":
            return False
        return self.window_kernel == "packed" or x.is_cuda

    def forward(self, x, positions, valid, cache: DecoderCache | None = None):
        """With a cache (generation), x continues the cached sequence at slot cache.length."""
        if cache is None and self.packed(x):
            order = pack_valid_first(valid)
            cos, sin = self.rope(positions.gather(1, order))
            h = _rows(x, order)
            for layer in self.layers:
                h = layer(h, cos, sin, "causal")
            back = torch.empty_like(order).scatter_(
                1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
            return _rows(h, back)  # every pixel back in its place
        cos, sin = self.rope(positions)
        if cache is None:
            mask, start, caches = attention_mask(valid), 0, [None] * len(self.layers)
        else:
            start, caches = cache.length, cache.layers
            mask = cache.extend(valid)
        for layer, kv in zip(self.layers, caches):
            x = layer(x, cos, sin, mask, kv, start)
        return x

    def make_cache(self, batch: int, max_len: int, device=None) -> DecoderCache:
        attn = self.layers[0].attn
        return DecoderCache(batch, max_len, [KVCache(attn.n_kv_heads) for _ in self.layers], device)


def set_window_kernel(model: nn.Module, kernel: str) -> None:
    """Set the window attention kernel (`auto` | `mask` | `packed`) of every windowed Stack."""
    if kernel not in WINDOW_KERNELS:
        raise ValueError(f"window kernel {kernel!r}: one of {WINDOW_KERNELS}")
    for m in model.modules():
        if isinstance(m, Stack):
            m.window_kernel = kernel


class KVCache:
    """Keys and values of one attention layer during generation (litgpt/gpt-fast style):
    preallocated (B, n_kv_heads, max_len, head_dim), only the n_kv_heads of GQA, written at
    cache slots. A slot is an element index; its RoPE position is applied before writing, so
    a masked element can take a slot without taking a position (spec section 5)."""

    def __init__(self, n_kv_heads: int, max_len: int = 0):
        self.n_kv_heads, self.max_len = n_kv_heads, max_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def write(self, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (N, Hkv, T, hd) at slots start..start+T-1; -> all keys/values so far."""
        if self.k is None:  # allocated on first use, in the dtype the layer computes in
            n, h, _, hd = k.shape
            self.k = k.new_zeros(n, h, self.max_len, hd)
            self.v = v.new_zeros(n, h, self.max_len, hd)
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache full: {end} slots needed, {self.k.shape[2]} allocated")
        self.k[:, :, start:end] = k.to(self.k.dtype)
        self.v[:, :, start:end] = v.to(self.v.dtype)
        return self.k[:, :, :end], self.v[:, :, :end]


class DecoderCache:
    """Per-layer KV caches of one Stack plus which slots hold valid (attendable) elements."""

    def __init__(self, batch: int, max_len: int, layers: list[KVCache], device=None):
        for kv in layers:
            kv.max_len = max_len
        self.layers, self.max_len, self.length = layers, max_len, 0
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)  # (B, max_len)

    def extend(self, valid: torch.Tensor) -> torch.Tensor:
        """Take T new slots whose validity is `valid` (B, T) -> attention mask (B, 1, T, length+T):
        causal over slots, valid keys only, the diagonal always allowed (as attention_mask)."""
        b, t = valid.shape
        start, end = self.length, self.length + valid.shape[1]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} slots needed, {self.max_len} allocated")
        self.valid[:, start:end] = valid
        q = torch.arange(start, end, device=valid.device)[:, None]  # (T, 1) query slots
        k = torch.arange(end, device=valid.device)[None]  # (1, end) key slots
        mask = ((k <= q)[None] & self.valid[:, None, :end]) | (k == q)[None]  # (B, T, end)
        self.length = end
        return mask[:, None]


def next_valid_index(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T) index of the first valid position strictly after each position,
    T where there is none (a reversed running minimum: no loop over positions)."""
    b, t = valid.shape
    idx = torch.arange(t, device=valid.device).expand(b, t)
    cand = torch.where(valid, idx, t)  # valid indices, t elsewhere
    nxt = cand.flip(1).cummin(1).values.flip(1)  # next valid at or after each position
    return torch.cat([nxt[:, 1:], torch.full((b, 1), t, device=valid.device)], 1)  # strictly after
