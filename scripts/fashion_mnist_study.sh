#!/usr/bin/env bash
# What buys linear-probe accuracy per CPU-minute on Fashion-MNIST (docs/results.md#what-buys-features-per-cpu-minute).
# Every variant pretrains for the same number of steps of the same batch (so the same images, and within 13% the
# same FLOPs: the three shapes have 0.79-0.89 M weights outside the embeddings), then probes every layer on the
# same images. Run one variant per call, so that two can share a 2-core machine, one thread each:
#   OMP_NUM_THREADS=1 bash scripts/fashion_mnist_study.sh base &
#   OMP_NUM_THREADS=1 bash scripts/fashion_mnist_study.sh deep &
#   bash scripts/fashion_mnist_study.sh pixels    # the raw-pixel baselines (14x14 and 28x28; 10k, 20k, 60k images)
# Variants: base (4 x 136, lr 2e-3), deep (8 x 96), shallow (2 x 192), lr4e-3 / lr1e-3 (base at another peak learning
# rate), bert (base, BERT objective: 15% of pixels masked), grays4 (base on a 4-gray palette instead of 8).
# Measured on one core each of a shared 2-core machine: about 10 min of pretraining + 4 min of probing per variant.
# Longer runs: STEPS=3000 (default 750) pretrains the variant 4 times as long into OUT/<variant>-3000, beside the
# study's run; PROBE_STEPS="750 1500" also probes those checkpoints (one is saved every 250 steps, all kept), each
# into OUT/<variant>-3000/probe-stepN. SEED=1 (default 0) repeats a run with other initial weights, batch order and
# dropout, into OUT/<variant>[-<steps>]-seed1: the same data, palette and probe, so seeds differ only by training.
# Needs: bash scripts/setup.sh; apt-get install -y dataset-fashion-mnist (or F=<dir with the IDX .gz files>).
# Each step is skipped when its output exists; OUT (default runs/fm) holds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
V=${1:?usage: fashion_mnist_study.sh base|deep|shallow|lr4e-3|lr1e-3|bert|grays4|pixels}
F=${F:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/fm}
IG=${IG:-.venv/bin/imagegpt}
STEPS=${STEPS:-750} BATCH=32   # 24,000 images = 0.42 epoch per variant
PROBE_STEPS=${PROBE_STEPS:-}
SEED=${SEED:-0}
[[ $SEED =~ ^[0-9]+$ ]] || { echo "SEED must be a non-negative integer, got $SEED" >&2; exit 2; }
for s in $STEPS $PROBE_STEPS; do
    [[ $s =~ ^[1-9][0-9]*$ ]] || { echo "STEPS and PROBE_STEPS must be positive integers, got $s" >&2; exit 2; }
done
for s in $PROBE_STEPS; do   # a checkpoint is saved every 250 steps
    { [ "$s" -lt "$STEPS" ] && [ $((s % 250)) = 0 ]; } || {
        echo "PROBE_STEPS must be multiples of 250 below STEPS ($STEPS), got $s" >&2; exit 2; }
done
PROBE_N=10000 TEST_N=10000      # probe: the first 10,000 training images, all 10,000 test images
CS="0.1 1 10 100 1000"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$F/$f.gz" ] || { echo "missing $F/$f.gz: apt-get install -y dataset-fashion-mnist (or set F=)" >&2; exit 1; }
done
PROBE=(--data "$F/train-images-idx3-ubyte.gz" --labels "$F/train-labels-idx1-ubyte.gz"
    --test-data "$F/t10k-images-idx3-ubyte.gz" --test-labels "$F/t10k-labels-idx1-ubyte.gz"
    --limit $PROBE_N --test-limit $TEST_N --C $CS --max-iter 2000 --quiet)

if [ "$V" = pixels ]; then   # the same classifier on the images the models see (14x14) and on 28x28 (about 25 min)
    [ -f "$OUT/palette14k8/preprocessor_config.json" ] || $IG fit-palette "$F/train-images-idx3-ubyte.gz" --k 8 \
        --grayscale --size 14 --out "$OUT/palette14k8"
    [ -f "$OUT/pixels.json" ] || .venv/bin/python - "$F" "$OUT" <<'PY'
import json, sys, time
from imagegpt.atomic import atomic_write_text
from imagegpt.datasets import load_labeled
from imagegpt.processor import ImageGPTImageProcessor
from imagegpt.probe import raw_pixel_baseline
F, OUT = sys.argv[1:]
out = {}
for size, palette in ((14, f"{OUT}/palette14k8"), (28, "src/imagegpt/models/fashion-mnist")):
    proc = ImageGPTImageProcessor.from_pretrained(palette)  # resizes to its size (14 or 28), as probe --pixels does
    _, y, x = load_labeled(f"{F}/train-images-idx3-ubyte.gz", f"{F}/train-labels-idx1-ubyte.gz", proc, None, True)
    _, ty, tx = load_labeled(f"{F}/t10k-images-idx3-ubyte.gz", f"{F}/t10k-labels-idx1-ubyte.gz", proc, None, True)
    for n in (10000, 20000, 60000):
        t = time.time()
        row = raw_pixel_baseline(x[:n], y[:n], tx, ty, Cs=[0.01, 0.1, 1, 10], max_iter=2000)
        out[f"{size}x{size}/{n}"] = {**row, "seconds": round(time.time() - t, 1)}
        print(size, n, out[f"{size}x{size}/{n}"], flush=True)
atomic_write_text(f"{OUT}/pixels.json", json.dumps(out, indent=1) + "\n")
PY
    exit 0
fi

LAYERS=4 WIDTH=136 HEADS=4 LR=2e-3 GRAYS=8 OBJ=autoregressive
case $V in
    base) ;;
    deep) LAYERS=8 WIDTH=96 ;;
    shallow) LAYERS=2 WIDTH=192 ;;
    lr4e-3) LR=4e-3 ;;
    lr1e-3) LR=1e-3 ;;
    bert) OBJ=bert ;;
    grays4) GRAYS=4 ;;
    *) echo "unknown variant $V" >&2; exit 2 ;;
esac
D=$OUT/$V
[ "$STEPS" = 750 ] || D=$OUT/$V-$STEPS   # a longer (or shorter) run sits beside the study's
[ "$SEED" = 0 ] || D=$D-seed$SEED

# 14x14 images (196 tokens: a quarter of 28x28's cost per image), GRAYS gray levels fitted by k-means
P=$OUT/palette14k$GRAYS T=$OUT/tokens14k$GRAYS
[ -f "$P/preprocessor_config.json" ] || $IG fit-palette "$F/train-images-idx3-ubyte.gz" --k $GRAYS --grayscale \
    --size 14 --out "$P"
[ -f "$T/manifest.json" ] || $IG tokenize "$F/train-images-idx3-ubyte.gz" --palette "$P" --out "$T"

[ -d "$D/train/final" ] || $IG train --data "$T" --out "$D/train" --set objective=$OBJ \
    --set model.n_embd=$WIDTH --set model.n_head=$HEADS --set model.n_layer=$LAYERS --set batch_size=$BATCH \
    --set max_steps=$STEPS --set lr=$LR --set min_lr=1e-4 --set warmup_steps=50 --set eval_interval=250 \
    --set eval_batches=10 --set save_interval=250 --set keep_last=0 --set seed=$SEED --quiet

[ -f "$D/probe/probe.json" ] || $IG probe --model "$D/train/final" "${PROBE[@]}" --out "$D/probe"
for s in $PROBE_STEPS; do   # the same probe on earlier checkpoints: accuracy per layer against pretraining compute
    ck=$(printf "%s/train/checkpoints/step-%07d" "$D" "$s")
    [ -f "$D/probe-step$s/probe.json" ] || $IG probe --model "$ck" "${PROBE[@]}" --out "$D/probe-step$s"
done
