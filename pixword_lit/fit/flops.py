"""FLOPs of one training step (forward + backward), counted with PyTorch's
`torch.utils.flop_counter.FlopCounterMode` (the tool Lightning's `measure_flops` wraps).

The counter sees every matmul the step runs (mm, addmm, bmm, baddbmm, the fused attention
kernels) with the usual convention, 2 FLOPs per multiply-add; elementwise work (norms,
RoPE, softmax outside fused kernels, the optimizer) is not counted. Conventions worth
knowing when reading a utilization:
- a linear layer on N rows: 2*N*in*out forward, twice that backward (input and weight grads);
- attention is counted dense: 4*N*H*T*T*hd forward (q@k^T and p@v, the causal half
  included); backward 2x that where it runs as explicit matmuls (`layers.matmul_attention`,
  CPU, short sequences), 2.5x in the fused SDPA kernels (they recompute the scores). The
  count is of what runs, so it depends on the kernel by that recompute;
- PyTorch 2.13 registers formulas for the CUDA attention kernels but not for the CPU one
  (`_scaled_dot_product_flash_attention_for_cpu`, what SDPA runs on CPU, mask or not):
  without a formula it counts 0. `register_cpu_attention` adds the same formulas for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten


def register_cpu_attention() -> None:
    """Count the CPU SDPA kernel as the CUDA ones are counted (idempotent)."""
    fwd = _aten._scaled_dot_product_flash_attention_for_cpu
    bwd = _aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(fwd)(_cpu_sdpa)
    if bwd not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(bwd)(_cpu_sdpa_backward)


def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything fn() runs (forward, backward, whatever it calls)."""
    register_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def counted_op_names() -> set[str]:
    """torch.profiler names ("aten::mm", ...) of the ops the counter counts: the time they
    take is the step's matmul time (`bench.training.utilization`'s ceiling)."""
    register_cpu_attention()
    return {str(op).replace("aten.", "aten::", 1) for op in flop_counter.flop_registry}


def train_step_flops(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one training step: loss_fn() (the forward pass and the loss) and backward.
    The model's gradients are cleared afterwards; the optimizer step is not counted."""

    def step():
        loss_fn().backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops


def batch_step_flops(model: torch.nn.Module, batch: dict) -> int:
    """FLOPs of one training step of `model` on `batch`, counted on a copy (the model's own
    gradients, hooks and wrappers untouched): what `pixword bench` counts for the same batch."""
    import copy

    from pixword_lit.model.pixword import mean_loss

    twin = copy.deepcopy(model).train()
    return train_step_flops(twin, lambda: mean_loss(twin, batch))
