"""Experiment grids: the spec, launching (local, parallel, SLURM), one cell as a job, status
and `pixword compare`."""
