"""`pixword bench ab`: what one change does to the bare training step, measured as an
interleaved A/B (README "Speed").

This machine's speed drifts by several percent over minutes, more than some effects worth
knowing; runs of different hours do not compare. Each pair here runs the step without and
with one change back to back, `pairs` times alternating, each arm in a fresh process (so
allocator state, caches and thread pools never carry over; the malloc change can only be
made at process start), and reports every arm's time, the best of each arm, their ratio and
the minor page faults per step. The changes (`CHANGES`) turn off something the project does
or try something it does not:

- sdpa_attention: SDPA's fused kernel for every attention (the matmuls `layers.attend` uses
  for short CPU training sequences off);
- malloc_defaults: glibc's default malloc thresholds (`memory.keep_freed_memory` skipped);
- no_swiglu_activation: the FFN computes w2(w1 x + w3 x) instead of w2(silu(w1 x) * w3 x):
  a wrong model, timed only to bound what fusing the SwiGLU activation could save;
- flush_denormals: torch.set_flush_denormal(True).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHANGES = {  # change -> dtypes measured
    "sdpa_attention": ("fp32", "bf16"),
    "malloc_defaults": ("fp32",),
    "no_swiglu_activation": ("fp32",),
    "flush_denormals": ("fp32",),
}


def arm(config: str, overrides: list[str], change: str | None, dtype: str, n_batches: int,
        threads: int | None) -> dict:
    """One arm in this process: the bare step's best pass time and faults per step."""
    import resource

    import torch

    from pixword_lit.bench import step as bt
    from pixword_lit.fit.memory import keep_freed_memory
    from pixword_lit.model import layers

    if threads:
        torch.set_num_threads(threads)
    tuned = keep_freed_memory()  # a no-op in the malloc_defaults arm: _run_arm sets a MALLOC_* variable
    if change == "sdpa_attention":
        layers.MATMUL_ATTENTION_MAX_KEYS = 0
    elif change == "no_swiglu_activation":
        layers.SwiGLU.forward = lambda self, x: self.w2(self.w1(x) + self.w3(x))
    elif change == "flush_denormals":
        torch.set_flush_denormal(True)
    s = bt.setup(config, overrides, n_batches)
    dev = bt.device_of("cpu")
    model = bt.make_model(s, dev)
    bt.time_bare(model, s, dtype, dev, count_flops=False, rounds=1)  # warm-up: the heap grows
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds = 2
    sec, _, loss = bt.time_bare(model, s, dtype, dev, count_flops=False, rounds=rounds)
    steps = rounds * len(s.batches) + 1  # time_bare's own warm-up step too
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    return {"step_s": sec, "faults_per_step": faults, "loss": loss, "pid": os.getpid(),
            "malloc_tuned": tuned, "matmul_attention_max_keys": layers.MATMUL_ATTENTION_MAX_KEYS}


def _run_arm(config, overrides, change, dtype, n_batches, threads) -> dict:
    env = dict(os.environ)
    if change == "malloc_defaults":
        env["MALLOC_ARENA_MAX"] = "8"  # any MALLOC_* variable: memory.py leaves glibc alone
    else:
        env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    code = ("import json, sys; from pixword_lit.bench.ab import arm; "
            "print(json.dumps(arm(*json.loads(sys.argv[1]))))")
    args = json.dumps([config, overrides, change, dtype, n_batches, threads])
    out = subprocess.run([sys.executable, "-c", code, args], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ab(config: str, overrides: list[str], changes=tuple(CHANGES), pairs: int = 3,
       n_batches: int = 4, threads: int | None = None) -> list[dict]:
    rows = []
    for change in changes:
        for dtype in CHANGES[change]:
            runs = {"base": [], "changed": []}
            for _ in range(pairs):
                for name, c in (("base", None), ("changed", change)):
                    runs[name].append(_run_arm(config, overrides, c, dtype, n_batches, threads))
            base = min(r["step_s"] for r in runs["base"])
            changed = min(r["step_s"] for r in runs["changed"])
            rows.append({
                "change": change, "dtype": dtype,
                "base_step_s": " / ".join(f"{r['step_s']:.4g}" for r in runs["base"]),
                "changed_step_s": " / ".join(f"{r['step_s']:.4g}" for r in runs["changed"]),
                "changed_over_base": round(changed / base, 3),
                "base_faults_per_step": round(sum(r["faults_per_step"] for r in runs["base"]) / pairs),
                "changed_faults_per_step": round(
                    sum(r["faults_per_step"] for r in runs["changed"]) / pairs),
            })
    return rows
