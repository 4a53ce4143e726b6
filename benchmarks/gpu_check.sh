#!/usr/bin/env bash
# GPU checks and both benchmarks on one CUDA GPU. Installs nothing.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # from anywhere; OUT_DIR defaults to $OUT or results/gpu_check
#
# 1. environment (nvidia-smi, torch, CUDA)                                   <= 45 s
# 2. tests/test_precision.py on CUDA: bf16/fp16 close to fp32, channels-last,
#    no host sync inside a training step (tests/test_train.py),
#    batch 4 = batch 1, torch.compile = eager (TF32 off)                      <= 100 s
# 3. benchmarks/bench_translate.py: README presets at 256x256, ddim1000, L = 100,
#    8 slices: base (fp32, batch 1), batch 8, channels-last, bf16, fp16,
#    compile, CUDA graphs                                                    <= 150 s
# 4. the loop's own cost per step (trivial networks), batch 1 and 8           <= 30 s
# 5. benchmarks/bench_train.py: README presets at 256x256, batch 10: UNet and
#    classifier, fp32, bf16, fp16, channels-last, compile, and the scaffold
#    against the bare step                                                   <= 120 s
# 6. benchmarks/bench_detect.py: detect.py's seconds per patient with a bundle of the README
#    presets (256x256, ddim1000, L = 100, bf16, batch 16), one raw 240x240x155 patient, 49 slices <= 90 s
# 7. benchmarks/bench_data.py --parts wait: the share of a real GPU training step (README presets,
#    256x256 from 240x240 slices, batch 10, UNet and classifier) spent waiting for data, default
#    workers and 0 workers, pinned memory and non-blocking copies                <= 90 s
# Each step has its own time limit, so one hang does not cost the others; logs and JSON
# results go to OUT_DIR (translate.json and train.json are rewritten after every path).
# The benchmarks run with --strict True: a path that raises, or whose output differs from the
# fp32 baseline beyond its tolerance, fails its step, and the script then exits with status 1.
#
# Budget: the step limits add up to 625 s (10.4 min), the most this script can take; the device
# tool gives a session 15 minutes in all, machine start included (a few minutes), which leaves
# about 1-2 minutes: enough to rerun one short step on its own (e.g. `timeout 90 python3
# benchmarks/bench_data.py ...` with the flags below), not the whole script.
#
# guided_diffusion's data loaders import nibabel. Where python3 lacks it (the lent GPU machines
# do), a pure-Python wheel in results/wheels/ is put on PYTHONPATH as it is (no install). Fetch it
# beforehand on a machine with a package index:
#   python3 -m pip download nibabel==5.4.2 --no-deps --only-binary=:all: -d results/wheels
# Translation and detection also draw report.html with matplotlib (a required dependency, not a
# pure-Python wheel): check `python3 -c "import matplotlib"` on the device in the same call; where
# it is missing, the steps that translate (3, 6) stop at the import and say so in their logs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-results/gpu_check}}
mkdir -p "$OUT_DIR"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import nibabel" 2>/dev/null; then
    for wheel in "$PWD"/results/wheels/nibabel-*.whl; do
        [ -f "$wheel" ] && export PYTHONPATH="$wheel:$PYTHONPATH"
    done
fi

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

step env 45 "$PY" -c "
import sys, torch, nibabel, guided_diffusion.pipeline.translate
print('python', sys.version.split()[0], 'torch', torch.__version__, 'CUDA', torch.version.cuda,
      'cudnn', torch.backends.cudnn.version(), 'nibabel', nibabel.__version__)
assert torch.cuda.is_available(), 'no CUDA device'
print('device', torch.cuda.get_device_name(0), 'TF32 matmul', torch.backends.cuda.matmul.allow_tf32,
      'TF32 cudnn', torch.backends.cudnn.allow_tf32)
"
if [ "$status" -ne 0 ]; then
    echo "environment check failed: not running the rest"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT_DIR/env.log"

step tests 100 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_precision.py -k "not cpu" \
    tests/test_train.py::test_cuda_training_step_has_no_host_sync
step translate 150 "$PY" benchmarks/bench_translate.py --device cuda --timestep_respacing ddim1000 \
    --noise_level 100 --n_images 8 --batch_size 8 --compile_mode default --strict True \
    --json_out "$OUT_DIR/translate.json"
step overhead 30 "$PY" benchmarks/bench_translate.py --device cuda --overhead --timestep_respacing ddim1000 \
    --noise_level 200 --n_images 8 --batch_size 8
step train 120 "$PY" benchmarks/bench_train.py --device cuda --batch_size 10 --steps 10 --warmup 3 \
    --rounds 3 --strict True --json_out "$OUT_DIR/train.json"
step detect 90 "$PY" benchmarks/bench_detect.py --preset readme --device cuda --precision bf16 --batch_size 16 \
    --patients 1 --json "$OUT_DIR/detect.json"
step data 90 "$PY" benchmarks/bench_data.py --device cuda --parts wait --preset readme --steps 20 --warmup 3 \
    --json_out "$OUT_DIR/data.json"
echo "gpu_check: $([ "$status" -eq 0 ] && echo all steps passed || echo some steps FAILED, see the logs above)"
exit $status
