#!/usr/bin/env bash
# Issue 25, part 4, second half: the fold and window grids again at this commit with 3 seeds
# (their run folders were not kept, so intervals and paired differences need the runs).
# Run from the repository root of a clean checkout after `pixword prep glyphs --out data/glyphs`.
set -u
commit=$(git rev-parse --short=7 HEAD)
log=results/reproduce/$commit-fold-window.log
echo "# results/reproduce/study_fold_window.sh at $(git rev-parse HEAD) ($(git status --porcelain | grep -qv '^??' && echo dirty || echo clean)) on $(nproc) cores" > "$log"
for g in fold window; do
  echo "=== grid $g $(date -u +%H:%M:%S)" >> "$log"
  pixword grid "$g" --parallel 2 2>&1 | tail -n 3 >> "$log"
  pixword compare "experiments/grids/$g.yaml" --out "runs/study/$g" 2>&1 | tail -n 2 >> "$log"
done
echo "=== done $(date -u +%H:%M:%S)" >> "$log"
