#!/usr/bin/env bash
# The GPU checks of csl-avalanche, ready for a CUDA machine. From the repository root:
#
#   benchmarks/gpu_check.sh [tests] [speed] [memory] [finetune]      (default: all four)
#
#   tests     the GPU-marked tests (pytest -m gpu)
#   speed     benchmarks/csl_speed.py on CUDA (Avalanche strategy against a plain loop)
#   memory    benchmarks/memory_scale.py, where present
#   finetune  benchmarks/finetune_scaling.py: fine-tuning under torchrun on 1 GPU, then on
#             every visible GPU
#
# Each step's output goes to the terminal and to $OUT/<step>.log (OUT: gpu_check_out); the run
# ends with one line per step. PYTHON names the interpreter (default: python). Exit code 0 when
# every step passed, 1 when one failed, 2 without CUDA.
set -uo pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-gpu_check_out}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    build=$("$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}")' 2>&1 | tail -n 1)
    echo "error: gpu_check.sh needs a CUDA device, and torch sees none ($build); run it on a GPU machine" >&2
    exit 2
fi

steps=("$@")
if [ ${#steps[@]} -eq 0 ]; then
    steps=(tests speed memory finetune)
fi
mkdir -p "$OUT"
nvidia-smi >"$OUT/device.txt" 2>&1 || true
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "GPUs:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])' | tee -a "$OUT/device.txt"

status=0
summary=()
run_step() {
    local name=$1 start=$SECONDS outcome=passed
    shift
    echo "== $name: $*"
    if ! "$@" 2>&1 | tee "$OUT/$name.log"; then
        outcome=FAILED
        status=1
    fi
    summary+=("$name: $outcome in $((SECONDS - start)) s (log: $OUT/$name.log)")
}

for step in "${steps[@]}"; do
    case $step in
    tests) run_step tests "$PYTHON" -m pytest -q -m gpu tests ;;
    speed) run_step speed "$PYTHON" benchmarks/csl_speed.py --device cuda ;;
    memory)
        if [ -f benchmarks/memory_scale.py ]; then
            run_step memory "$PYTHON" benchmarks/memory_scale.py
        else
            summary+=("memory: skipped, benchmarks/memory_scale.py is not there")
        fi
        ;;
    finetune) run_step finetune "$PYTHON" benchmarks/finetune_scaling.py --out "$OUT/finetune" ;;
    *)
        echo "error: unknown step '$step'; choose from tests, speed, memory, finetune" >&2
        exit 2
        ;;
    esac
done
printf '%s\n' "${summary[@]}"
exit $status
