#!/usr/bin/env bash
# The long Fashion-MNIST run of docs/results.md (#the-long-run): the best recipe of scripts/fashion_mnist_study.sh,
# pretrained for as long as the budget allows, probed at several checkpoints (probe accuracy against compute),
# then fine-tuned.
# The pretraining runs in chunks of CHUNK_MINUTES: every call trains until the chunk's time is up, saves a
# checkpoint, and the next call continues from it with an exact resume (same batches, same optimizer state, same
# schedule), so the run can be spread over days. Usage (one thread, the way it was measured):
#   OMP_NUM_THREADS=1 bash scripts/fashion_mnist_long.sh train     # again and again, until it says it is done
#   OMP_NUM_THREADS=1 bash scripts/fashion_mnist_long.sh probe [STEP ...]  # those checkpoints (default: all saved)
#   OMP_NUM_THREADS=1 bash scripts/fashion_mnist_long.sh finetune STEP   # fine-tunes the checkpoint of STEP
#   FT_AUGMENT=0 ... finetune STEP    # the same on the images as they are (no crops or flips): finetune-noaug-stepSTEP
#   FT_AUGMENT=flip ... finetune STEP # left-right flips only, no crops: finetune-flip-stepSTEP
#   FT_SEED=1 ... finetune STEP       # another seed (held-out images, head init, batches): output name gets -seed1
#   FT_INIT=scratch ... finetune STEP # the control: STEP's model shape and palette with random weights (no
#                                     # pretraining), the same recipe: output name gets -scratch
# Needs: bash scripts/setup.sh; apt-get install -y dataset-fashion-mnist (or F=<dir with the IDX .gz files>).
# Each step is skipped when its output exists; OUT (default runs/fm/long) holds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:?usage: fashion_mnist_long.sh train|probe [STEP ...]|finetune STEP}
F=${F:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/fm/long}
IG=${IG:-.venv/bin/imagegpt}
CHUNK_MINUTES=${CHUNK_MINUTES:-60}
LAYERS=4 WIDTH=136 HEADS=4 LR=2e-3 GRAYS=8   # the study's choice (see docs/results.md)
STEPS=6000 BATCH=32                            # 192,000 images = 3.4 epochs
PROBE_N=20000 CS="0.1 1 10 100 1000"           # probe: the first 20,000 training images, all 10,000 test images
FT_STEPS=${FT_STEPS:-3600} FT_MINUTES=${FT_MINUTES:-45}   # fine-tuning: 3,600 steps of 32 images = 2 epochs
FT_AUGMENT=${FT_AUGMENT:-1} FT_SEED=${FT_SEED:-0} FT_INIT=${FT_INIT:-pretrained}
[[ $FT_SEED =~ ^[0-9]+$ ]] || { echo "FT_SEED must be a non-negative integer, got $FT_SEED" >&2; exit 2; }
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$F/$f.gz" ] || { echo "missing $F/$f.gz: apt-get install -y dataset-fashion-mnist (or set F=)" >&2; exit 1; }
done
TRAIN=(--data "$F/train-images-idx3-ubyte.gz" --labels "$F/train-labels-idx1-ubyte.gz")
TEST=(--test-data "$F/t10k-images-idx3-ubyte.gz" --test-labels "$F/t10k-labels-idx1-ubyte.gz")
P=$OUT/palette T=$OUT/tokens

case $WHAT in
train)
    [ -f "$P/preprocessor_config.json" ] || $IG fit-palette "$F/train-images-idx3-ubyte.gz" --k $GRAYS --grayscale \
        --size 14 --out "$P"
    [ -f "$T/manifest.json" ] || $IG tokenize "$F/train-images-idx3-ubyte.gz" --palette "$P" --out "$T"
    last=$(printf "step-%07d" $STEPS)   # train/final is written at every stop, so the checkpoint says when it is done
    if [ "$(cat "$OUT/train/checkpoints/latest" 2>/dev/null)" = "$last" ]; then
        echo "$OUT/train reached step $STEPS: pretraining is done"; exit 0
    fi
    RESUME=()
    [ -f "$OUT/train/checkpoints/latest" ] && RESUME=(--resume)
    # a resume may change the time cap (and only safe settings); everything else comes from the checkpoint
    $IG train --data "$T" --out "$OUT/train" "${RESUME[@]}" --set model.n_embd=$WIDTH --set model.n_head=$HEADS \
        --set model.n_layer=$LAYERS --set batch_size=$BATCH --set max_steps=$STEPS --set lr=$LR --set min_lr=1e-4 \
        --set warmup_steps=100 --set eval_interval=250 --set eval_batches=10 --set save_interval=500 \
        --set keep_last=0 --set max_time_minutes=$CHUNK_MINUTES --quiet
    ;;
probe)
    shift
    CKS=("$OUT"/train/checkpoints/step-*)
    [ $# -gt 0 ] && CKS=($(for s in "$@"; do printf "%s/train/checkpoints/step-%07d\n" "$OUT" "$s"; done))
    for ck in "${CKS[@]}"; do
        [ -d "$ck" ] || { echo "no checkpoint $ck" >&2; continue; }
        s=$((10#${ck##*step-}))
        [ -f "$OUT/probe-step$s/probe.json" ] || $IG probe --model "$ck" "${TRAIN[@]}" "${TEST[@]}" \
            --limit $PROBE_N --average 1 2 3 4 --C $CS --max-iter 2000 --quiet --out "$OUT/probe-step$s"
    done
    ;;
finetune)
    S=${2:?finetune needs the step of a checkpoint}
    ck=$(printf "%s/train/checkpoints/step-%07d" "$OUT" "$S")
    # LP-FT (the head starts from a linear probe of 5,000 images), the joint loss, random crops and flips (a
    # mirrored garment is the same garment), 1,000 training images held out to pick the best step
    # at 14x14 the crop's 1.125x resize enlarges each training image and cuts its edges, unlike the test images
    # (docs/results.md measures the harm): FT_AUGMENT=0 trains on the images as they are, FT_AUGMENT=flip on the
    # images and their mirrors
    case $FT_AUGMENT in
    1) FT_OUT=$OUT/finetune-step$S AUG=() ;;
    0) FT_OUT=$OUT/finetune-noaug-step$S AUG=(--no-augment) ;;
    flip) FT_OUT=$OUT/finetune-flip-step$S AUG=(--no-crop) ;;
    *) echo "FT_AUGMENT must be 1 (crops and flips), 0 (none) or flip (flips only), got $FT_AUGMENT" >&2; exit 2 ;;
    esac
    case $FT_INIT in
    pretrained) ;;
    scratch)  # the same shape and tokens, untrained: what the fine-tune owes to pretraining
        FT_OUT=$FT_OUT-scratch INIT=$OUT/scratch-init-step$S-seed$FT_SEED
        [ -f "$INIT/config.json" ] || $IG init --like "$ck" --seed "$FT_SEED" --out "$INIT"
        ck=$INIT ;;
    *) echo "FT_INIT must be pretrained or scratch, got $FT_INIT" >&2; exit 2 ;;
    esac
    [ "$FT_SEED" = 0 ] || FT_OUT=$FT_OUT-seed$FT_SEED   # seed 0 keeps the names of the documented runs
    [ -f "$FT_OUT/finetune.json" ] || $IG finetune --model "$ck" "${TRAIN[@]}" "${TEST[@]}" "${AUG[@]}" \
        --label-names "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot" \
        --val-size 1000 --probe-init 5000 --steps $FT_STEPS --batch-size 32 --lr 2e-4 --gen-weight 0.5 \
        --eval-interval 300 --patience 0 --max-minutes $FT_MINUTES --seed "$FT_SEED" --quiet --out "$FT_OUT"
    ;;
*) echo "unknown command $WHAT: train, probe or finetune STEP" >&2; exit 2 ;;
esac
