"""`pixword bench` for training: utilization, framework overhead, data path, cost vs image size.

Everything trains on real batches of the experiment's training shards (the glyphs of
`pixword prep glyphs` for the quickstart), taken once from the project's loader and kept in
memory, so each measurement is the same work every run. Models are freshly initialized with
the run seed; speed does not depend on the weights.

- utilization: FLOPs of one training step (`flops.train_step_flops`: FlopCounterMode) over
  the bare step time, as a fraction of the peak matmul throughput: a square torch.mm timed
  in the same process, same device and dtype (on CUDA the datasheet's dense peak is used,
  `step.GPU_PEAK`, the measured one is reported beside it). Beside it, the *ceiling*: the
  utilization the step would reach if only its matmuls took time (FLOPs over the profiled
  self time of the ops the counter counts, `matmul_seconds`): what fusing or removing all
  the other work could win at most, without faster matmuls.
- overhead: the project's LightningModule through `Trainer.fit` (no logger, checkpoints,
  progress bar or validation) over the same batches against the bare loop.
- data: batches/s of the training loader alone (1 and 2 workers) against the batches/s the
  bare loop consumes.
- scaling: bare step time per valid pixel for each attention variant (and the dense
  objective) at several image sizes.

The bare step and its timing: bench/step.py.
"""

from __future__ import annotations

import time

import torch

from pixword_lit.bench.step import (
    datasheet_peak,
    device_of,
    loader,
    make_model,
    matmul_seconds,
    peak_matmul,
    pixels,
    profiled,
    setup,
    sync,
    time_bare,
)

SIZES = {  # three model sizes: the quickstart and two wider ones (head dim 24/64/64)
    "quickstart": [],
    "dim256": ["model.dim=256", "model.n_heads=4", "model.n_kv_heads=2"],
    "dim512": ["model.dim=512", "model.n_heads=8", "model.n_kv_heads=4"],
}


VARIANTS = {  # scaling: (attention, objective)
    "global_conditional": ["model.attention.name=global_conditional"],
    "pooled": ["model.attention.name=pooled"],
    "full_causal": ["model.attention.name=full_causal"],
    "dense (global_conditional)": ["model.attention.name=global_conditional",
                                   "model.objective.name=dense"],
}


def utilization(config: str, overrides: list[str], sizes=tuple(SIZES), dtypes=("fp32", "bf16"),
                n_batches: int = 4, device: str | None = None,
                compiled=("quickstart",)) -> list[dict]:
    """The peak matmul rate is measured again before every row and the best of all is the
    peak of every row: on a shared machine one measurement can fall in a busy moment.
    Sizes in `compiled` get a second row with `model.compile` (model.compile_blocks; FLOPs
    counted on the eager model: the counter does not see inside compiled kernels)."""
    from pixword_lit.model.pixword import compile_blocks

    dev = device_of(device)
    peaks = {dt: 0.0 for dt in dtypes}
    rows = []
    for size in sizes:
        s = setup(config, [*overrides, *SIZES[size]], n_batches)
        for dt in dtypes:
            peaks[dt] = max(peaks[dt], peak_matmul(dt, dev))
            model = make_model(s, dev)
            sec, flops, loss = time_bare(model, s, dt, dev)
            runs = [(size, sec, loss, matmul_seconds(model, s, dt, dev))]
            if size in compiled:
                model = make_model(s, dev)
                start = {k: v.clone() for k, v in model.state_dict().items()}
                compile_blocks(model)
                time_bare(model, s, dt, dev, count_flops=False, rounds=1)  # compiles
                model.load_state_dict(start)  # the eager row's trajectory again: same loss
                sec_c, _, loss_c = time_bare(model, s, dt, dev, count_flops=False)
                runs.append((f"{size} (model.compile)", sec_c, loss_c,
                             matmul_seconds(model, s, dt, dev)))
            for name, sec, loss, mm_sec in runs:
                rows.append({
                    "model": name, "dim": s.cfg.model.dim, "params_M": round(model.num_params() / 1e6, 2),
                    "dtype": dt, "batch_size": s.cfg.data.batch_size, "step_s": round(sec, 4),
                    "GFLOP_per_step": round(flops / 1e9, 2), "achieved_GFLOPs": round(flops / sec / 1e9, 1),
                    "pix_tokens_per_s": round(pixels(s) / n_batches / sec), "loss": round(loss, 4),
                    "matmul_s": round(mm_sec, 4), "matmul_GFLOPs": round(flops / mm_sec / 1e9, 1),
                })
    for r in rows:
        peaks[r["dtype"]] = max(peaks[r["dtype"]], peak_matmul(r["dtype"], dev, reps=2))
    for r in rows:
        sheet = datasheet_peak(dev, r["dtype"])
        r["measured_peak_GFLOPs"] = round(peaks[r["dtype"]] / 1e9, 1)
        r["peak_used"] = f"datasheet {sheet / 1e12:.0f} TFLOP/s" if sheet else "measured"
        peak = sheet or peaks[r["dtype"]]
        r["utilization_pct"] = round(100 * r["achieved_GFLOPs"] * 1e9 / peak, 1)
        r["ceiling_pct"] = round(100 * r["matmul_GFLOPs"] * 1e9 / peak, 1)
    return rows


def overhead(config: str, overrides: list[str], n_batches: int = 6, dtype: str = "fp32",
             device: str | None = None, rounds: int = 3) -> list[dict]:
    """Seconds per step of the bare loop and of Lightning's fit over the same batches (each:
    a warm-up step, then `rounds` passes over the batches; the fastest pass counts)."""
    import lightning as L

    from pixword_lit.system.build import build_module

    dev = device_of(device)
    s = setup(config, overrides, n_batches)
    bare = time_bare(make_model(s, dev), s, dtype, dev, count_flops=False, rounds=rounds)[0]
    torch.manual_seed(s.cfg.run.seed)
    module = build_module(s.parts)
    starts, ends = {}, {}

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            starts[batch_idx] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(dev)
            ends[batch_idx] = time.perf_counter()

    feed = [s.batches[0], *s.batches * rounds]  # warm-up step, then the passes
    trainer = L.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu", devices=1, max_steps=len(feed),
        precision="bf16-mixed" if dtype == "bf16" else "32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=s.cfg.trainer.gradient_clip_val, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[Clock()],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(
        feed, batch_size=None, shuffle=False))
    n = n_batches
    fit = min(ends[1 + r * n + n - 1] - starts[1 + r * n] for r in range(rounds)) / n
    return [{"loop": "bare", "dtype": dtype, "step_s": round(bare, 4), "ratio_to_bare": 1.0,
             "steps": n_batches},
            {"loop": "lightning fit", "dtype": dtype, "step_s": round(fit, 4),
             "ratio_to_bare": round(fit / bare, 3), "steps": n_batches}]


def data(config: str, overrides: list[str], n_batches: int = 30, workers=(1, 2),
         consume_step_s: float | None = None, device: str | None = None) -> list[dict]:
    """Batches/s of the training loader alone (after its first batch: worker start-up is
    not counted) against 1 / (bare fp32 step time)."""
    from pixword_lit.system.build import build_parts
    from pixword_lit.system.config import load_config

    if consume_step_s is None:
        dev = device_of(device)
        s = setup(config, overrides, 4)
        consume_step_s = time_bare(make_model(s, dev), s, "fp32", dev, count_flops=False)[0]
    parts = build_parts(load_config(config, list(overrides)), None)
    rows = []
    for w in workers:
        it = iter(loader(parts, w))
        next(it)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        rate = n_batches / (time.perf_counter() - t0)
        del it
        rows.append({"num_workers": w, "loader_batches_per_s": round(rate, 1),
                     "training_batches_per_s": round(1 / consume_step_s, 2),
                     "ratio": round(rate * consume_step_s, 1)})
    return rows


def scaling(config: str, overrides: list[str], image_sizes=(16, 32, 48, 64, 96),
            variants=tuple(VARIANTS), n_batches: int = 2, batch_size: int = 2,
            device: str | None = None, rounds: int = 1) -> list[dict]:
    """Bare fp32 step time per valid pixel; max_seq_len large enough for a whole image.
    One pass (full_causal at 96 px takes about half a minute a step on one CPU thread)."""
    dev = device_of(device)
    rows = []
    for v in variants:
        for size in image_sizes:
            w = (size // 8) ** 2
            over = [*overrides, *VARIANTS[v], f"model.image_size={size}", "model.window_size=8",
                    f"data.batch_size={batch_size}", f"data.max_seq_len={w + 96}"]
            s = setup(config, over, n_batches)
            sec, _, _ = time_bare(make_model(s, dev), s, "fp32", dev, count_flops=False,
                                  rounds=rounds)
            px = pixels(s) / n_batches
            rows.append({"variant": v, "image_size": size, "windows": w, "step_s": round(sec, 4),
                         "pixels_per_step": int(px), "us_per_pixel": round(1e6 * sec / px, 2)})
    return rows


def profile(config: str, overrides: list[str], n_batches: int = 4, dtype: str = "fp32",
            top: int = 15, device: str | None = None) -> list[dict]:
    """torch.profiler over bare steps: the ops with the most self time."""
    dev = device_of(device)
    s = setup(config, overrides, n_batches)
    events, attr = profiled(make_model(s, dev), s, dtype, dev)
    events = sorted(events, key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events)
    return [{"op": e.key[:60], "self_ms_per_step": round(getattr(e, attr) / 1e3 / n_batches, 2),
             "pct": round(100 * getattr(e, attr) / total, 1), "calls_per_step": e.count // n_batches}
            for e in events[:top]]


def plot_scaling(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v in dict.fromkeys(r["variant"] for r in rows):
        pts = [r for r in rows if r["variant"] == v]
        ax.plot([r["image_size"] for r in pts], [r["us_per_pixel"] for r in pts], "o-", label=v)
    ax.set_xlabel("image size (px, 8 px windows)")
    ax.set_ylabel("training step time per pixel (us)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
