#!/usr/bin/env bash
# Every GPU check and measurement in one device call of at most 8 minutes: a fresh GPU machine has
# 15 minutes in all, start-up included. Results go under $OUT (default out/gpu): one log per step,
# summary.txt (each step's exit status and duration) and summary.md (environment, CUDA tests,
# window-op table, streaming tables, training rate and op counts, gathered from the logs).
#
#   bash bench/gpu_session.sh                          # every step, from the repository root
#   STEPS="environment tests window_attention" bash bench/gpu_session.sh
#
# No install is needed: the repository is put on PYTHONPATH and $PYTHON (default python3) runs
# everything. A failing or timed-out step does not stop the others. Steps, most important first, each
# with its own time limit in seconds (450 in all: 7.5 minutes):
#   environment          15  GPU, Python, torch, CUDA and the optional packages (versions or "missing")
#   tests               120  the CUDA tests (pytest -m gpu: training fp32/bf16 with checkpoints, streaming
#                            per back end against CPU eager, evaluator, export, the Triton kernels of the
#                            window op and the fused temporal-step ops) and those kernels in Triton's interpreter
#   window_attention     25  bench/window_attention_gpu.py: reference, Triton kernel, tiled, dense SDPA
#   streaming_eager      45  bench/streaming.py on CUDA, fp16, SegFormer and SD-CPC, B0 and B1, eager
#   streaming_cudagraph  45  the same with the cudagraph back end
#   streaming_compile    95  the same with torch.compile (inductor; a model whose compilation fails runs
#                            eager and its rows say so)
#   train                75  sdcpc-synth (8 videos of 30 frames at 480x853), then 40 iterations of
#                            config/train/vspw_b1.yaml on CUDA: clips/s
#   op_count             30  bench/op_count.py: ATen operators per streaming frame (GPU path)
set -u

out="${OUT:-out/gpu}"
py="${PYTHON:-python3}"
all_steps="environment tests window_attention streaming_eager streaming_cudagraph streaming_compile train op_count"
steps="${STEPS:-$all_steps}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a step cut short by its time limit still leaves its log
summary="$out/summary.txt"
: > "$summary"

run_step() {  # run_step NAME SECONDS COMMAND...: log to $out/NAME.log, status to summary.txt
    local name=$1 limit=$2
    shift 2
    case " $steps " in *" $name "*) ;; *) return 0 ;; esac
    local start=$SECONDS status
    # through bash -c: the steps below that are shell functions run under timeout too (exported)
    timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@" > "$out/$name.log" 2>&1
    status=$?
    echo "$name: exit $status, $((SECONDS - start)) s (limit $limit s)" | tee -a "$summary"
}

versions='
import importlib, platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else None}")
for name in ("numpy", "yaml", "safetensors", "triton", "onnx", "onnxscript", "onnxruntime", "pytest",
             "xdist", "torch_tensorrt", "tensorrt"):
    try:
        print(name + ": " + str(getattr(importlib.import_module(name), "__version__", "present")))
    except ImportError as error:
        print(f"{name}: missing ({error})")
'

cuda_tests() {  # the gpu-marked tests (in 4 processes when pytest-xdist is there), then the interpreter test
    local parallel=()
    "$py" -c "import xdist" 2> /dev/null && parallel=(-n 4)
    "$py" -m pytest -q -rfEs -p no:cacheprovider -m gpu "${parallel[@]}" test/test_cuda.py \
        test/test_window_attention_op.py test/test_fused_temporal_ops.py
    local status=$?
    "$py" -m pytest -q -rfEs -p no:cacheprovider test/test_window_attention_op.py test/test_fused_temporal_ops.py \
        -k interpreter -s
    return $(( status || $? ))
}

streaming() {  # streaming BACKEND: both models, B1 then B0, fp16, 30 frames, no separate memory runs
    "$py" bench/streaming.py --device cuda --precision fp16 --backends "$1" --cases b1 b0 --frames 30 \
        --warmup 5 --no-memory
}

train() {  # synthetic data, 40 iterations of vspw_b1 on CUDA, then the rate
    local data="$out/train_data" run="$out/train_run"
    rm -rf "$data" "$run"
    "$py" -m sdcpc_core.tools.synth "$data" --train-seeds 0-7 --frames 30 --size 480x853 --workers 8 || return $?
    "$py" -m sdcpc_core.train --config config/train/vspw_b1.yaml --out "$run" --set "data.root=$data" \
        --set schedule.iterations=40 --set schedule.warmup_iters=10 --set val.every=0 --set val.at_end=false \
        --set runtime.sync_bn=false --set runtime.device=cuda --set data.num_workers=8 --set runtime.log_every=10 \
        --set runtime.checkpoint_every=40 || return $?
    "$py" - "$run/log.jsonl" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for r in records:
    if r.get("kind") == "train":
        print(f"iterations {r['iter'] - 9:>2}-{r['iter']:<2}: {r['clips_per_s']:.1f} clips/s, "
              f"data waiting {100 * r['data_fraction']:.0f}%, loss {r['loss']:.3f}")
EOF
}

export out py
export -f cuda_tests streaming train
run_step environment 15 bash -c '(nvidia-smi 2> /dev/null || echo "nvidia-smi: not available") && "$0" -c "$1"' "$py" "$versions"
run_step tests 120 cuda_tests
run_step window_attention 25 "$py" bench/window_attention_gpu.py --json "$out/window_attention_gpu.json"
run_step streaming_eager 45 streaming eager
run_step streaming_cudagraph 45 streaming cudagraph
run_step streaming_compile 95 streaming compile
run_step train 75 train
run_step op_count 30 "$py" bench/op_count.py --json "$out/op_count.json"

# ------------------------------------------------------------------------------------------ summary.md
section() {  # section TITLE STEP [FILTER]: the step's status and its log (through FILTER) in a text block
    local title=$1 name=$2 filter=${3:-cat} status
    echo "## $title"
    echo
    status=$(grep "^$name: " "$summary")
    if [ -z "$status" ]; then
        echo "not run (not in STEPS)"
        echo
        return
    fi
    echo "\`$status\`"
    case "$status" in *"exit 124"*|*"exit 137"*) echo; echo "**Timed out**: the log up to its time limit." ;; esac
    echo
    echo '```text'
    tr '\r' '\n' < "$out/$name.log" | $filter
    echo '```'
    echo
}

pytest_lines() { grep -E "passed|failed|error|skipped|SKIPPED|FAILED|ERROR|^E |triton [0-9]" | tail -n 60; }
train_lines() { grep -E "sdcpc-(synth|train):|clips/s|rror" | grep -v "it/s\]$" | tail -n 20; }

{
    echo "# GPU session, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Step statuses (\`exit 124\`: stopped at its time limit):"
    echo
    echo '```text'
    cat "$summary"
    echo '```'
    echo
    section "Environment" environment
    section "CUDA tests" tests pytest_lines
    section "Window attention op (ms per call, CUDA events)" window_attention
    for backend in eager cudagraph compile; do
        section "Streaming, fp16, $backend (ms per frame)" "streaming_$backend"
    done
    section "Training: vspw_b1 on synthetic 480x853 videos, 40 iterations" train train_lines
    section "Op counts (ATen operators per streaming frame, GPU path)" op_count
} > "$out/summary.md"
echo "summary: $out/summary.md"
