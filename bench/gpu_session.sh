#!/usr/bin/env bash
# Every GPU check and measurement in one command, for a session that is lent a GPU machine
# (time there is short). Results go under $OUT (default out/gpu): one log per step, JSON where the
# step writes one, and summary.txt with every step's exit status and duration.
#
#   bash bench/gpu_session.sh                          # all steps, from the repository root
#   STEPS="tests window_attention" bash bench/gpu_session.sh
#
# No install is needed: the repository is put on PYTHONPATH and $PYTHON (default python3) runs
# everything. A failing step does not stop the others. Steps, most important first, each with its
# own time limit (60, 240, 120, 120, 120 and 420 s: 18 minutes at most, so on a device whose calls
# are limited to 10 minutes run the first five steps in one call and streaming_compile in another):
#   environment       GPU, Python, torch, CUDA and the optional packages (versions or "missing")
#   tests             the window op's CUDA tests (Triton kernel against the reference) and the
#                     back-end and streaming tests, on this machine's torch
#   window_attention  bench/window_attention_gpu.py: reference, Triton kernel, tiled (exported)
#                     formulation and dense SDPA, fp16 and fp32
#   streaming_fp16    bench/streaming.py on CUDA, eager, fp16 (B0 512x1024, B1 480x853)
#   streaming_fp32    the same in fp32
#   streaming_compile bench/streaming.py on CUDA, torch.compile (inductor), fp16
set -u

out="${OUT:-out/gpu}"
py="${PYTHON:-python3}"
steps="${STEPS:-environment tests window_attention streaming_fp16 streaming_fp32 streaming_compile}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary="$out/summary.txt"
: > "$summary"

run_step() {  # run_step NAME SECONDS COMMAND...: log to $out/NAME.log, status to summary.txt
    local name=$1 limit=$2
    shift 2
    case " $steps " in *" $name "*) ;; *) return 0 ;; esac
    local start=$SECONDS status
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    status=$?
    echo "$name: exit $status, $((SECONDS - start)) s" | tee -a "$summary"
}

versions='
import importlib, platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else None}")
for name in ("numpy", "yaml", "safetensors", "triton", "onnx", "onnxscript", "onnxruntime", "pytest",
             "torch_tensorrt", "tensorrt"):
    try:
        print(name + ": " + str(getattr(importlib.import_module(name), "__version__", "present")))
    except ImportError as error:
        print(f"{name}: missing ({error})")
'

run_step environment 60 bash -c '(nvidia-smi || echo "nvidia-smi: not available") && "$0" -c "$1"' "$py" "$versions"
run_step tests 240 "$py" -m pytest -q -ra test/test_window_attention_op.py test/test_window_attention.py \
    test/test_torch_backends.py test/test_streaming.py
run_step window_attention 120 "$py" bench/window_attention_gpu.py --json "$out/window_attention_gpu.json"
run_step streaming_fp16 120 "$py" bench/streaming.py --device cuda --precision fp16 --backends eager
run_step streaming_fp32 120 "$py" bench/streaming.py --device cuda --precision fp32 --backends eager
run_step streaming_compile 420 "$py" bench/streaming.py --device cuda --precision fp16 --backends compile
