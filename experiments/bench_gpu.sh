#!/usr/bin/env bash
# The paper configuration on one CUDA GPU, in a few minutes (issue 11, section 3):
# bf16 training step time, peak memory, pix tokens/s and MFU (against the datasheet dense
# bf16 peak, bench_train.GPU_PEAK; beside it the ceiling: the MFU if only the matmul and
# attention kernels took time) with the packed window kernel (the CUDA default) and the
# dense-mask reference, then the first-batch loss on the GPU (fp32 with TF32 off, and bf16)
# against fp32 on the CPU, same initial weights. Writes results/bench/gpu/paper.{csv,md}.
#
#   bash experiments/bench_gpu.sh                 # from the repository root, after make install
#   CONFIG=experiments/paper_mixed.yaml bash experiments/bench_gpu.sh
#   bash experiments/bench_gpu.sh --allow-dirty --set model.dim=64 ...   # extra bench args
#
# Data: 48 synthetic photo-like images (data_prep.synthetic), prepared once into
# data/bench_images; real shards work too: BENCH_DATA=data/images bash experiments/bench_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
CONFIG=${CONFIG:-experiments/paper_image_only.yaml}
DATA=${BENCH_DATA:-data/bench_images}
OUT=${OUT:-results/bench/gpu}
if [ ! -f "$DATA/train/index.json" ]; then
  "$PY" -m data_prep.synthetic data/bench_synthetic --count 48
  "$PY" -m pixword_lit.cli prep images data/bench_synthetic/images --out "$DATA" --overwrite
fi
"$PY" -c "import torch; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
"$PY" -m pixword_lit.cli bench paper --config "$CONFIG" \
  --set "data.train=$DATA/train" --set "data.val=$DATA/val" --set data.small_images=upscale \
  --set data.num_workers=0 --set data.batch_size="${BATCH:-2}" --out "$OUT" "$@"
cat "$OUT/paper.md"
