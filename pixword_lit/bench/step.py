"""The bare training step that `pixword bench` measures, and how it is timed.

Everything trains on real batches of the experiment's training shards, taken once from the
project's loader and kept in memory, so each measurement is the same work every run. Models
are freshly initialized with the run seed; speed does not depend on the weights. The bare
loop is what the LightningModule's training step computes: forward, the loss (one mean over
the batch's scored targets), backward, gradient-norm clipping, AdamW. bf16 is torch.autocast,
as Lightning's bf16-mixed. The *ceiling* (`matmul_seconds`): the step time if only its
matmuls took time (the profiled self time of the ops the FLOP counter counts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pixword_lit.fit.flops import train_step_flops

GPU_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


@dataclass
class Setup:
    cfg: object
    parts: object
    batches: list


def loader(parts, num_workers: int):
    """The training loader of a run (data.py), outside a Trainer."""
    from pixword_lit.data.stream import PixLoader, ShardStream

    d, seed = parts.cfg.data, parts.cfg.run.seed
    stream = ShardStream(parts.train, parts.builder, d.batch_size, seed, d.shuffle)
    return PixLoader(stream, num_workers, None, seed)


def setup(config: str, overrides: list[str], n_batches: int) -> Setup:
    from pixword_lit.system.build import build_parts
    from pixword_lit.system.config import load_config

    cfg = load_config(config, list(overrides))
    parts = build_parts(cfg, None)
    batches = []
    for b in loader(parts, 0):
        batches.append(b)
        if len(batches) == n_batches:
            break
    return Setup(cfg, parts, batches)


def device_of(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(s: Setup, device: torch.device):
    from pixword_lit.model.pixword import PixWordModel

    torch.manual_seed(s.cfg.run.seed)
    model = PixWordModel(s.cfg.model, s.parts.vocab, s.parts.folding)
    return model.to(device).train()


def loss_of(model, batch: dict) -> torch.Tensor:
    from pixword_lit.model.pixword import mean_loss

    return mean_loss(model, batch)


def bare_step(model, cfg, dtype: str):
    """-> step(batch) -> loss: one optimizer step as the LightningModule trains."""
    o = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay)
    clip = cfg.trainer.gradient_clip_val
    device_type = next(model.parameters()).device.type

    def step(batch):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, torch.bfloat16, enabled=dtype == "bf16"):
            loss = loss_of(model, batch)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss

    return step


def time_bare(model, s: Setup, dtype: str, device: torch.device, count_flops: bool = True,
              rounds: int = 2):
    """-> (seconds per step, FLOPs per step or None, last loss): the first batch once to warm
    up, then `rounds` passes of one step per batch; the fastest pass counts (on a shared
    machine the least disturbed one). FLOPs are counted on the same batches first."""
    batches = [to_device(b, device) for b in s.batches]
    flops = None
    if count_flops:
        with torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bf16"):
            flops = sum(train_step_flops(model, lambda b=b: loss_of(model, b)) for b in batches)
        flops /= len(batches)
    step = bare_step(model, s.cfg, dtype)
    step(batches[0])
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        for b in batches:
            loss = step(b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best / len(batches), flops, float(loss.detach())


def peak_matmul(dtype: str, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Measured FLOP/s of an n x n x n torch.mm (best of reps)."""
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device).to(dt) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def datasheet_peak(device: torch.device, dtype: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in GPU_PEAK.items() if k in name), None)
    return peak if peak is None or dtype == "bf16" else peak / 2  # tf32 dense: half of bf16


def pixels(s: Setup) -> int:
    return sum(int(b["n_pixels"].sum()) for b in s.batches)


def profiled(model, s: Setup, dtype: str, dev: torch.device) -> tuple[list, str]:
    """torch.profiler over one bare step per batch (after a warm-up step) -> (its events
    averaged by op name, the attribute holding their self time: CPU, or device on CUDA)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = bare_step(model, s.cfg, dtype)
    batches = [to_device(b, dev) for b in s.batches]
    step(batches[0])
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        for b in batches:
            step(b)
        sync(dev)
    return prof.key_averages(), "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"


def matmul_seconds(model, s: Setup, dtype: str, dev: torch.device, rounds: int = 2) -> float:
    """Seconds per step in the ops the FLOP counter counts (mm, bmm, fused attention...): the
    least of `rounds` profiled passes (as step times are the fastest pass)."""
    from pixword_lit.fit.flops import counted_op_names

    names = counted_op_names()
    best = float("inf")
    for _ in range(rounds):
        events, attr = profiled(model, s, dtype, dev)
        best = min(best, sum(getattr(e, attr) for e in events if e.key in names))
    return best / 1e6 / len(s.batches)
