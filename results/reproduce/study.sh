#!/usr/bin/env bash
# Issue 25, part 4: re-run the attention and embedding grids at this commit (3 seeds, parameter-
# matched arms), then `pixword grid GRID --reproduce` one cell of every other committed grid, into one log.
# Run from the repository root of a clean checkout (no -dirty in any record), after the data:
#   pixword prep glyphs --out data/glyphs
#   pixword prep glyphs --out data/glyphs_scaling --num-train 16000 --num-val 512
#   pixword prep glyphs --task reading --ink black --place center --canvas 40x16 --out data/reading_plain
#   bash results/reproduce/study.sh
set -u
commit=$(git rev-parse --short=7 HEAD)
log=results/reproduce/$commit.log
say() { echo "=== $* $(date -u +%H:%M:%S)" | tee -a "$log"; }
{
  echo "# results/reproduce/study.sh at $(git rev-parse HEAD) ($(git status --porcelain | grep -qv '^??' && echo dirty || echo clean)) on $(nproc) cores, $(python -c 'import torch; print("torch", torch.__version__)')"
} > "$log"
for g in attention embedding; do
  say "grid $g"
  pixword grid "$g" --parallel 2 2>&1 | tail -n 3 | tee -a "$log"
  pixword compare "experiments/grids/$g.yaml" --out "runs/study/$g" 2>&1 | tail -n 2 | tee -a "$log"
done
# (compare writes outside the tree, so no later run records a -dirty commit; the tables are
# copied into results/ and committed afterwards.) Then one cell of each grid not re-run above,
# against its committed table, two at a time (one thread each).
rep() { say "reproduce $*"; pixword grid "$1" --reproduce ${2:-} > "runs/reproduce-$1.txt" 2>&1; }
(rep fold; rep window; rep scaling_lr) &
(rep scaling; rep reading_small arm-pix_table_eqflops) &
wait
for g in fold window scaling_lr scaling reading_small; do cat "runs/reproduce-$g.txt" >> "$log"; done
say done
