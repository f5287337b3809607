#!/usr/bin/env bash
# The experiment of docs/results.md: pretrain an iGPT on Fashion-MNIST's training images (no labels), then
# linear-probe every layer (with the raw-pixel baseline) and fine-tune it as a classifier.
# Needs: bash scripts/setup.sh; apt-get install -y dataset-fashion-mnist. About 3 hours on a 2-core CPU.
# Each step is skipped when its output exists; OUT (default runs/exp) holds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
F=${F:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/exp}
IG=.venv/bin/imagegpt
NAMES="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$F/$f.gz" ] || { echo "missing $F/$f.gz: apt-get install -y dataset-fashion-mnist (or set F=)" >&2; exit 1; }
done

# 1. tokens: the bundled model's 16-gray palette (fit-palette --k 16 --grayscale gives the same one)
$IG tokenize "$F/train-images-idx3-ubyte.gz" --palette src/imagegpt/models/fashion-mnist --out "$OUT/tokens"

# 2. pretraining, labels unused: 6 layers x 128, 2200 steps of 16 images (~49 min)
[ -d "$OUT/train/final" ] || $IG train --data "$OUT/tokens" --out "$OUT/train" --set model.n_embd=128 \
    --set model.n_head=4 --set model.n_layer=6 --set batch_size=16 --set max_steps=2200 --set lr=2e-3 \
    --set min_lr=1e-4 --set warmup_steps=50 --set eval_interval=100 --set eval_batches=10 --set save_interval=100 \
    --set max_time_minutes=58

# 3. linear probe of every layer + raw pixels: the first 20,000 training images, all 10,000 test images
[ -f "$OUT/probe/probe.json" ] || $IG probe --model "$OUT/train/final" \
    --data "$F/train-images-idx3-ubyte.gz" --labels "$F/train-labels-idx1-ubyte.gz" \
    --test-data "$F/t10k-images-idx3-ubyte.gz" --test-labels "$F/t10k-labels-idx1-ubyte.gz" \
    --limit 20000 --pixels --concat 2 3 4 --C 0.01 0.1 1 10 100 --max-iter 2000 --out "$OUT/probe"

# 4. fine-tuning with the joint loss, the head started from a linear probe on 5,000 images (LP-FT); 1,000 training
#    images held out for early stopping; no augmentation (under one epoch, nothing to regularize)
[ -f "$OUT/finetune/finetune.json" ] || $IG finetune --model "$OUT/train/final" \
    --data "$F/train-images-idx3-ubyte.gz" --labels "$F/train-labels-idx1-ubyte.gz" \
    --test-data "$F/t10k-images-idx3-ubyte.gz" --test-labels "$F/t10k-labels-idx1-ubyte.gz" \
    --label-names "$NAMES" --val-size 1000 --probe-init 5000 --steps 1200 --batch-size 32 --lr 2e-4 \
    --gen-weight 0.5 --no-augment --eval-interval 150 --patience 3 --max-minutes 55 --out "$OUT/finetune"

# 5. a second point of probe accuracy against pretraining loss: the bundled 4-layer model (val 0.812 nats/token
#    after 16 CPU-minutes), the same probe on the same images
[ -f "$OUT/probe-bundled/probe.json" ] || $IG probe --model fashion-mnist \
    --data "$F/train-images-idx3-ubyte.gz" --labels "$F/train-labels-idx1-ubyte.gz" \
    --test-data "$F/t10k-images-idx3-ubyte.gz" --test-labels "$F/t10k-labels-idx1-ubyte.gz" \
    --limit 20000 --C 0.01 0.1 1 10 100 --max-iter 2000 --out "$OUT/probe-bundled"
