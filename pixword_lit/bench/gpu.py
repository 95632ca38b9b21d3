"""`pixword bench paper`: the paper's configuration (experiments/paper_image_only.yaml: 224 px
images in 16 px windows, dim 768, 5 image + 12 decoder layers) on the current device, for
experiments/bench_gpu.sh.

Rows: bf16 (autocast) training steps with each window attention kernel (`packed`, the CUDA
default, and the `mask` reference): step time, peak memory, pix tokens/s, FLOPs/step and
MFU against the device's dense bf16 peak (datasheet on CUDA, `bench.step.GPU_PEAK`; the
measured matmul peak on CPU) and its ceiling (the MFU if only the matmuls and attention
kernels took time: `bench.step.matmul_seconds`); then the loss agreement check: the first
batch's fp32 loss on this device (TF32 off) and bf16 loss against the fp32 loss on CPU, same
initial weights.
"""

from __future__ import annotations

import torch

from pixword_lit.bench import step as bt
from pixword_lit.model.layers import set_window_kernel


def paper(config: str, overrides: list[str], n_batches: int = 3, device: str | None = None,
          kernels=("packed", "mask"), peak_n: int = 2048) -> list[dict]:
    """peak_n: the size of the matmul that measures the peak where no datasheet gives it (a
    CPU). Tests pass a small one: on a CPU without bf16 instructions (AVX2 only) one bf16
    2048^3 matmul takes ~15 s."""
    dev = bt.device_of(device)
    s = bt.setup(config, list(overrides), n_batches)
    sheet = bt.datasheet_peak(dev, "bf16")
    peak = sheet or bt.peak_matmul("bf16", dev, n=peak_n)
    rows = []
    for kernel in kernels:
        model = bt.make_model(s, dev)
        set_window_kernel(model, kernel)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sec, flops, loss = bt.time_bare(model, s, "bf16", dev)
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        mm_sec = bt.matmul_seconds(model, s, "bf16", dev)  # the MFU if only the matmuls took time
        rows.append({"check": f"train bf16, window kernel {kernel}", "step_s": round(sec, 4),
                     "peak_mem_GiB": round(mem, 2), "pix_tokens_per_s": round(bt.pixels(s) / n_batches / sec),
                     "GFLOP_per_step": round(flops / 1e9, 3),
                     "MFU_pct": round(100 * flops / sec / peak, 1),
                     "matmul_s": round(mm_sec, 4), "ceiling_pct": round(100 * flops / mm_sec / peak, 1),
                     "peak_used": f"{'datasheet' if sheet else 'measured'} {peak / 1e12:.1f} TFLOP/s",
                     "loss": round(loss, 5)})
        del model
    rows += kernels_available(dev, s.cfg.model) + agreement(s, dev)
    return rows


def kernels_available(dev: torch.device, m) -> list[dict]:
    """CUDA: which fused SDPA backends take the packed path's call (bf16, is_causal, GQA, one
    window of the config's size); SDPA silently falls back to the math kernel otherwise."""
    if dev.type != "cuda":
        return []
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    hd, p = m.dim // m.n_heads, m.window_size**2
    q = torch.randn(4, m.n_heads, p, hd, device=dev, dtype=torch.bfloat16)
    kv = torch.randn(4, m.n_kv_heads, p, hd, device=dev, dtype=torch.bfloat16)
    rows = []
    for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        try:
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                F.scaled_dot_product_attention(q, kv, kv, is_causal=True,
                                               enable_gqa=m.n_heads != m.n_kv_heads)
            ok = "yes"
        except Exception as e:  # noqa: BLE001 - a report, not a failure
            ok = f"no: {str(e).splitlines()[0][:80]}"
        rows.append({"check": f"packed-path SDPA call runs on {backend}", "result": ok})
    return rows


def first_loss(s, device: torch.device, dtype: str) -> float:
    model = bt.make_model(s, device)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bf16"):
        return float(bt.loss_of(model, bt.to_device(s.batches[0], device)))


def agreement(s, dev: torch.device) -> list[dict]:
    """Loss of the first batch (same initial weights) on this device vs fp32 on CPU."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = first_loss(s, torch.device("cpu"), "fp32")
        rows = []
        for dtype in ("fp32", "bf16"):
            got = first_loss(s, dev, dtype)
            rows.append({"check": f"first-batch loss {dev.type} {dtype} vs cpu fp32",
                         "loss": round(got, 6), "cpu_fp32_loss": round(ref, 6),
                         "rel_diff": float(f"{abs(got - ref) / abs(ref):.2e}")})
        return rows
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
