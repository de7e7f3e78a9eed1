#!/usr/bin/env bash
# The CUDA paths CI (CPU only) never runs, in one short script for a GPU machine:
#  1. model speed of both presets on the GPU (benchmarks/lens_speed.py; the paper preset at 512^2);
#  2. the real training loop with --device cuda: the cpu preset and the paper preset (DenseNet-121,
#     9 slices, whole slices), a few epochs each, on a finished run's preprocessed data;
#  3. `lens propose` on the GPU against the CPU with the same round-2 model: the same proposals?
#  4. `lens train-fpr` / `lens score-fpr` on the GPU, both presets (the paper preset for a few steps).
#
#   benchmarks/gpu_check.sh [RESULTS_DIR=results] [OUT_DIR=gpu_check]
# Run it with the project's Python (inside its environment, or PYTHON=/path/to/python); it needs torch,
# torchvision, numba, h5py, pandas and pyarrow, not SimpleITK. RESULTS_DIR needs prep/, lens/round2/lens.pt,
# lens/round2/proposals/fused/deeplesion/train.3d.parquet and lens/mining/labels_round2.parquet (the default
# DAG's outputs). Each step prints its time; a failed step is reported and the next one still runs (the FPR
# steps score the propose step's output); the exit status is non-zero if any failed.
set -uo pipefail
R=$(realpath -m "${1:-results}")
O=$(realpath -m "${2:-gpu_check}")
DEV=${DEV:-cuda}  # DEV=cpu runs the same steps on the CPU (slow: a dry run of the script)
PY=${PYTHON:-python}
mkdir -p "$O"
cd "$(dirname "$0")/.."  # the repository: config.yaml, benchmarks/, lens_core/
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # benchmarks/*.py import lens_core
python() { "$PY" "$@"; }
lens() { python -m lens_core.cli "$@"; }
failed=()
check() {  # check TITLE FUNCTION [ARGS]: one step in a subshell that stops at its first error, timed
    local title=$1
    shift
    echo "== $title"
    SECONDS=0
    if (set -e; "$@"); then echo "   ok ($SECONDS s)"; else echo "   FAILED ($SECONDS s)"; failed+=("$title"); fi
}

python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

speed() {
    # the cpu preset at the default run's settings; the paper preset on whole 512 x 512 slices, as the paper
    python benchmarks/lens_speed.py --device "$DEV" --presets cpu --steps 40 --reps 4
    python benchmarks/lens_speed.py --device "$DEV" --presets paper --size 512,512 --paper-crop 512 --paper-steps 10
}

train_cpu() {
    lens train --prep-dir "$R/prep" --config config.yaml --config-section train --set epochs=4 'lr_steps=[3]' \
        --device "$DEV" --out "$O/train_cpu" --no-progress
    python -c "import pandas as pd; l = pd.read_parquet('$O/train_cpu/losses.parquet'); \
print(l.groupby('epoch')[['total', 'grad_norm']].mean().round(3).to_string())"
}

train_paper() {
    lens train --prep-dir "$R/prep" --config config.yaml --config-section train \
        --set preset=paper paper_from_scratch=true slices=9 crop_size=null epochs=2 'lr_steps=[1]' lr=0.0001 warmup_steps=0 batch_size=4 \
        afp_trunk=per_dataset fpn_channels=null afp_pre_nms=300 proposals_per_afp=100 pool_top_n=200 \
        --device "$DEV" --out "$O/train_paper" --no-progress
}

propose() {
    local dev
    for dev in "$DEV" cpu; do
        lens propose --model "$R/lens/round2/lens.pt" --prep-dir "$R/prep" --dataset deeplesion --split test \
            --device $dev --out "$O/prop_$dev.parquet" --out3d "$O/prop_$dev.3d.parquet" --no-progress
    done
    python benchmarks/compare_proposals.py "$O/prop_$DEV.parquet" "$O/prop_cpu.parquet"
}

fpr() {
    local preset=$1 extra=(--epochs 6)
    [ "$preset" = paper ] && extra=(--epochs 1 --tp-per-epoch 64)
    lens train-fpr --prep-dir "$R/prep/deeplesion" --proposals3d "$R/lens/round2/proposals/fused/deeplesion/train.3d.parquet" \
        --labels "$R/lens/mining/labels_round2.parquet" --preset "$preset" "${extra[@]}" --device "$DEV" \
        --out "$O/fpr_$preset.pt" --no-progress
    lens score-fpr --model "$O/fpr_$preset.pt" --prep-dir "$R/prep/deeplesion" \
        --proposals3d "$O/prop_$DEV.3d.parquet" --score fused --device "$DEV" --out "$O/scored_$preset.parquet"
    python -c "import pandas as pd; s = pd.read_parquet('$O/scored_$preset.parquet'); \
print(len(s), 'scored'); print(s[['score_lens', 'score_fpr', 'score_fused']].describe().round(3).to_string())"
}

check "model speed, cpu and paper presets ($DEV)" speed
check "lens train, cpu preset, 4 epochs ($DEV)" train_cpu
check "lens train, paper preset (DenseNet-121, 9 slices, whole slices), 2 epochs ($DEV)" train_paper
check "lens propose, round-2 model, DeepLesion test split: $DEV vs cpu" propose
check "lens train-fpr / score-fpr, cpu preset ($DEV)" fpr cpu
check "lens train-fpr / score-fpr, paper preset, 1 short epoch ($DEV)" fpr paper

if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "gpu check: every step ran on $DEV"
