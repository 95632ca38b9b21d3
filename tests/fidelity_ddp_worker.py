"""Run by tests/test_fidelity.py: 2 CPU processes (Lightning ddp, gloo) train 2 steps on fixed
batches, each rank one half of the global batch; rank 0 saves gradients and parameters.

    python tests/fidelity_ddp_worker.py OUT.pt
(Lightning starts rank 1 by running this file again.)
"""

from __future__ import annotations

import sys

import torch
from fidelity_batches import config, global_batches, train

if __name__ == "__main__":
    torch.set_num_threads(1)
    halves = global_batches()
    per_rank = [[step[r] for step in halves] for r in range(2)]
    steps, trainer = train(config("trainer.max_steps=2"), per_rank, steps=2, strategy="ddp")
    if trainer.is_global_zero:
        torch.save({"grads": steps.grads, "params": steps.params}, sys.argv[1])
