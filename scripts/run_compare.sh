#!/usr/bin/env bash
# The paper's comparison in miniature: train the four methods on the synthetic example in
# data/brats with SMALL networks, translate and score the test slices with each, and
# write the comparison table and figure.
#
#   scripts/run_compare.sh [PYTHON]        (default PYTHON: .venv/bin/python)
#
# Methods and output folders (each holds <id>.npz/png, metrics.csv, summary.json):
#   results/compare/ddim   classifier-guided DDIM translation (the paper's method)
#   results/compare/ddpm   classifier-guided stochastic DDPM sampling (p_sample_loop_known)
#   results/compare/vae    the VAE baseline (cAAE, guided_diffusion/methods/vae.py)
#   results/compare/fpgan  FixedPoint-GAN (guided_diffusion/methods/fpgan.py)
# then results/compare/comparison.{md,csv,png}; checkpoints go to results/compare/train/,
# the output of every step to results/compare/logs/. These are rebuilt from scratch.
#
# Budget: two lanes run side by side with one thread each (diffusion model | classifier,
# VAE, FixedPoint-GAN), then the translations; about 10-15 minutes on 2 CPU cores.
# These networks and step counts only show the pipeline working end to end: the numbers
# are not the paper's (SPEC section 9 gives the full settings). Override the step counts
# with DIFF_STEPS, CLS_STEPS, VAE_STEPS, FPGAN_STEPS, the translation with NOISE_LEVEL
# and SCALE, the threads per lane with COMPARE_THREADS, the folder with COMPARE_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${1:-${PYTHON:-.venv/bin/python}}"
OUT="${COMPARE_OUT:-results/compare}"
DATA=data/brats
DIFF_STEPS="${DIFF_STEPS:-800}"
CLS_STEPS="${CLS_STEPS:-300}"
VAE_STEPS="${VAE_STEPS:-600}"
FPGAN_STEPS="${FPGAN_STEPS:-500}"
NOISE_LEVEL="${NOISE_LEVEL:-30}"   # of the 100 respaced steps, as in make demo
SCALE="${SCALE:-100}"
export OMP_NUM_THREADS="${COMPARE_THREADS:-1}" MKL_NUM_THREADS="${COMPARE_THREADS:-1}"

for value in "$DIFF_STEPS" "$CLS_STEPS" "$VAE_STEPS" "$FPGAN_STEPS" "$NOISE_LEVEL"; do
  case "$value" in
    '' | *[!0-9]* | 0) echo "error: DIFF_STEPS, CLS_STEPS, VAE_STEPS, FPGAN_STEPS and NOISE_LEVEL must be positive integers, got '$value'" >&2; exit 2 ;;
  esac
done
if [ ! -d "$DATA/training" ] || [ ! -d "$DATA/testing" ] || [ ! -d "$DATA/test_labels" ]; then
  echo "error: $DATA/{training,testing,test_labels} not found (see data/README.md)" >&2
  exit 2
fi

# the demo's networks and schedule (guided_diffusion/pipeline/presets.py), sampled with 100 DDIM/DDPM steps
MODEL="--dataset brats $("$PY" -c 'from guided_diffusion.pipeline.presets import DEMO_MODEL_FLAGS as f, DEMO_DIFFUSION_FLAGS as d; print(f, d)')"
CLASSIFIER="--dataset brats $("$PY" -c 'from guided_diffusion.pipeline.presets import DEMO_CLASSIFIER_FLAGS as f, DEMO_DIFFUSION_FLAGS as d; print(f, d)')"
VAE="--image_size 64 --dataset brats --vae_width 16 --vae_depth 4 --latent_dim 64 --latent_disc_width 128"
FPGAN="--image_size 64 --dataset brats --fpgan_width 16 --fpgan_res_blocks 3 --fpgan_d_width 16 --fpgan_d_depth 4"
COMMON="--progress False --seed 0"
TEST="--data_dir $DATA/testing --label_dir $DATA/test_labels"

rm -rf "$OUT"/ddim "$OUT"/ddpm "$OUT"/vae "$OUT"/fpgan "$OUT"/train "$OUT"/logs "$OUT"/comparison.*
LOGS="$OUT/logs"
TRAIN="$OUT/train"
mkdir -p "$LOGS" "$TRAIN"

# run NAME CMD...: the command's output goes to $LOGS/NAME.log; a failure shows its tail.
run() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "  $name: started"
  "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "error: $name failed (exit $rc); the end of $LOGS/$name.log:" >&2
    tail -n 20 "$LOGS/$name.log" >&2
    return "$rc"
  fi
  echo "  $name: done in $((SECONDS - t0)) s"
}

# a failing lane stops the script: end the other lane's job too
trap 'for job in $(jobs -p); do pkill -P "$job" 2>/dev/null; kill "$job" 2>/dev/null; done; true' EXIT

start=$SECONDS
echo "== training (two lanes, $OMP_NUM_THREADS thread(s) each)"
# shellcheck disable=SC2086  # the flag strings are meant to split
run diffusion "$PY" scripts/image_train.py --data_dir $DATA/training $MODEL $COMMON --batch_size 8 --lr 3e-4 \
  --lr_anneal_steps "$DIFF_STEPS" --save_interval 100000 --log_interval 50 --log_dir "$TRAIN/diffusion" &
lane1=$!
# shellcheck disable=SC2086
{
  run classifier "$PY" scripts/classifier_train.py --data_dir $DATA/training $CLASSIFIER $COMMON --batch_size 8 \
    --lr 3e-4 --iterations "$CLS_STEPS" --save_interval 100000 --log_interval 50 --eval_interval 50 \
    --log_dir "$TRAIN/classifier" &&
  run vae "$PY" scripts/vae_train.py --data_dir $DATA/training $VAE $COMMON --batch_size 10 --lr 3e-4 \
    --iterations "$VAE_STEPS" --save_interval 100000 --log_interval 50 --log_dir "$TRAIN/vae" &&
  run fpgan "$PY" scripts/fpgan_train.py --data_dir $DATA/training $FPGAN $COMMON --batch_size 10 --lr 3e-4 \
    --iterations "$FPGAN_STEPS" --save_interval 100000 --log_interval 50 --log_dir "$TRAIN/fpgan"
} &
lane2=$!
wait "$lane1"
wait "$lane2"

MODEL_PATH=$(printf '%s/diffusion/model%06d.pt' "$TRAIN" "$DIFF_STEPS")
CLASSIFIER_PATH=$(printf '%s/classifier/model%06d.pt' "$TRAIN" "$CLS_STEPS")
VAE_PATH=$(printf '%s/vae/model%06d.pt' "$TRAIN" "$VAE_STEPS")
G_PATH=$(printf '%s/fpgan/G%06d.pt' "$TRAIN" "$FPGAN_STEPS")

echo "== translation and scoring"
SAMPLE="$TEST $MODEL $CLASSIFIER $COMMON --model_path $MODEL_PATH --classifier_path $CLASSIFIER_PATH
  --timestep_respacing ddim100 --noise_level $NOISE_LEVEL --classifier_scale $SCALE --batch_size 8"
# shellcheck disable=SC2086
run ddim "$PY" scripts/classifier_sample_known.py $SAMPLE --use_ddim True --output_dir "$OUT/ddim" \
  --log_dir "$LOGS/ddim" &
lane1=$!
# shellcheck disable=SC2086
{
  run ddpm "$PY" scripts/classifier_sample_known.py $SAMPLE --use_ddim False --output_dir "$OUT/ddpm" \
    --log_dir "$LOGS/ddpm" &&
  run vae_translate "$PY" scripts/vae_translate.py $TEST $VAE $COMMON --model_path "$VAE_PATH" \
    --output_dir "$OUT/vae" --log_dir "$LOGS/vae_translate" &&
  run fpgan_translate "$PY" scripts/fpgan_translate.py $TEST $FPGAN $COMMON --model_path "$G_PATH" \
    --output_dir "$OUT/fpgan" --log_dir "$LOGS/fpgan_translate"
} &
lane2=$!
wait "$lane1"
wait "$lane2"

echo "== comparison"
"$PY" scripts/compare.py "$OUT/ddim" "$OUT/ddpm" "$OUT/vae" "$OUT/fpgan" \
  --names "DDIM (ours; L=$NOISE_LEVEL; s=$SCALE),DDPM (L=$NOISE_LEVEL; s=$SCALE),VAE (cAAE),FixedPoint-GAN" \
  --out "$OUT" --examples 4
echo "total: $((SECONDS - start)) s"
