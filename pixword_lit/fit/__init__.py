"""A training run: `pixword fit` and `validate`, callbacks, preemption, pictures, FLOP and
memory accounting, the end-of-run report."""
