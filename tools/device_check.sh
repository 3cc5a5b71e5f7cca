#!/usr/bin/env bash
# The whole GPU check, in two halves, so that the GPU machine builds nothing.
#
#   tools/device_check.sh prepare        # here: builds with --features cuda and puts the release
#                                        # binary, the GPU tests and cuda_bench in target/device/
#   tools/device_check.sh run [DIR]      # on the GPU machine (target/device/ carried there):
#                                        # runs the GPU tests and the benchmarks, and writes
#                                        # every figure to DIR/device_check.txt (DIR: $OUT, else target/device)
#
# `run` finds CUDA's libraries (NVRTC, cuDNN, cuBLAS, and the driver's libcuda) in the PyTorch
# installation's `nvidia` packages and the usual driver folders, and ptxas beside that NVRTC
# (else beside nvcc). Each step has its own time limit, 480 s in all, under the GPU machine's
# 600 s per command. A step that fails is reported and the run goes on, so that one call
# gathers everything; the exit status is that of the GPU tests.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE_DIR=target/device

prepare() {
  set -e
  cargo build --release --features cuda --bin resnet --example cuda_bench
  local tests
  tests=$(cargo test --release --features cuda --test cuda --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
  [ -n "$tests" ] || { echo "could not find the test binary of tests/cuda.rs" >&2; exit 1; }
  mkdir -p "$DEVICE_DIR"
  cp target/release/resnet "$DEVICE_DIR/resnet"
  cp "$tests" "$DEVICE_DIR/cuda-tests"
  cp target/release/examples/cuda_bench "$DEVICE_DIR/cuda-bench"
  # The published ResNet-20 and the exact official test records it scores 932/1017 on.
  local shared=../shared/data
  # And the first 1017 records of each training batch in one file, to train on.
  if [ -d "$shared" ]; then
    cp -f "$shared/resnet-cifar10-pretrained/resnet20-12fca82f.safetensors" \
      "$shared/cifar-10-official-partial/test_batch.first1017.bin" "$DEVICE_DIR/"
    cat "$shared"/cifar-10-official-partial/data_batch_[1-5].first1017.bin >"$DEVICE_DIR/train5085.bin"
  fi
  du -sh "$DEVICE_DIR"
  echo "ready: $DEVICE_DIR/{resnet,cuda-tests,cuda-bench}; on the GPU machine: tools/device_check.sh run"
}

# Folders holding CUDA's shared libraries: the pip `nvidia` packages PyTorch brings, then the
# driver's usual places.
library_path() {
  python3 - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = [d for r in roots for d in sorted(glob.glob(os.path.join(r, "*", "lib")))]
dirs += [d for d in ("/usr/local/nvidia/lib64", "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu") if os.path.isdir(d)]
print(":".join(dirs))
EOF
}

# ptxas from the same toolkit as the NVRTC found first (a pip `nvidia/*/bin`), else the path's.
find_ptxas() {
  local dir
  for dir in ${LD_LIBRARY_PATH//:/ }; do
    if ls "$dir"/libnvrtc.so* >/dev/null 2>&1; then
      [ -x "$dir/../bin/ptxas" ] && { echo "$dir/../bin/ptxas"; return; }
      break
    fi
  done
  command -v ptxas || ls /usr/local/cuda/bin/ptxas 2>/dev/null || true
}

step() {
  local title=$1 limit=$2
  shift 2
  echo "== $title" >>"$REPORT"
  echo "\$ $*" >>"$REPORT"
  local start=$SECONDS
  timeout "$limit" "$@" >>"$REPORT" 2>&1
  local rc=$?
  echo "(exit $rc, $((SECONDS - start)) s)" >>"$REPORT"
  echo >>"$REPORT"
  echo "$title: exit $rc"
  return $rc
}

run() {
  local out=${1:-${OUT:-$DEVICE_DIR}}
  mkdir -p "$out"
  REPORT="$out/device_check.txt"
  : >"$REPORT"
  for f in "$DEVICE_DIR/resnet" "$DEVICE_DIR/cuda-tests" "$DEVICE_DIR/cuda-bench"; do
    [ -x "$f" ] || { echo "missing $f: run 'tools/device_check.sh prepare' on the build machine and carry $DEVICE_DIR"; exit 2; }
  done
  local libs
  libs=$(library_path)
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+${libs:+:}$LD_LIBRARY_PATH}"
  local ptxas
  ptxas=$(find_ptxas)
  {
    echo "device check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1
    echo "ptxas: ${ptxas:-not found}"
    echo
  } >>"$REPORT"
  # The kernels, whole networks' inference and training steps, and GPU runs of the CLI
  # against the CPU engine; on this machine no test may skip.
  PTXAS=$ptxas RESNET_REQUIRE_GPU=1 RESNET_REQUIRE_NVRTC=$([ -n "$ptxas" ] && echo 1 || echo 0) \
    step "GPU tests" 70 "$DEVICE_DIR/cuda-tests" --test-threads=1 --nocapture
  local tests_rc=$?
  if [ -e "$DEVICE_DIR/test_batch.first1017.bin" ]; then
    step "ours: the published ResNet-20 on the 1017 exact test images (the CPU and PyTorch: 932/1017)" 20 \
      "$DEVICE_DIR/resnet" --device cuda eval --model resnet20 --norm imagenet \
      --weights "$DEVICE_DIR/resnet20-12fca82f.safetensors" --data "$DEVICE_DIR/test_batch.first1017.bin"
  fi
  # Our training steps and inference on the GPU, synthetic data.
  local ours="$DEVICE_DIR/resnet --device cuda bench --warmup 3 --steps 10"
  # The tf32 and bf16 runs choose cuDNN's algorithms by timing them, as PyTorch's side
  # does (cudnn.benchmark); the f32 ones by cuDNN's heuristics, the default.
  RESNET_CUDNN_BENCHMARK=1 step "ours: ResNet-50 batch 256 bf16, algorithms by timing" 45 \
    $ours --model resnet50 --batch 256 --precision bf16
  RESNET_CUDNN_BENCHMARK=1 step "ours: ResNet-50 batch 256 tf32, algorithms by timing" 40 \
    $ours --model resnet50 --batch 256 --precision tf32
  step "ours: ResNet-50 batch 1" 10 $ours --model resnet50 --batch 1
  RESNET_CUDNN_BENCHMARK=1 step "ours: ResNet-56 batch 128 tf32, algorithms by timing" 20 \
    $ours --model resnet56 --batch 128 --precision tf32
  step "our kernels and cuDNN's convolutions, timed" 15 "$DEVICE_DIR/cuda-bench"
  # Training: ResNet-20 for 200 iterations on 5085 exact CIFAR images, on the GPU and on
  # this machine's CPU from the same seed, their loss curves side by side.
  if [ -e "$DEVICE_DIR/train5085.bin" ]; then
    local data="--data $DEVICE_DIR/train5085.bin --test-data $DEVICE_DIR/test_batch.first1017.bin --seed 1 --overwrite"
    local train="$DEVICE_DIR/resnet train --model resnet20 $data --iterations 200 --log-every 20"
    step "ours: ResNet-20 training on the GPU, 200 iterations" 30 $train --device cuda --out "$out/gpu-resnet20"
    step "ours: the same in bf16" 30 $train --device cuda --precision bf16 --out "$out/gpu-bf16-resnet20"
    step "ours: the same on the CPU" 20 $train --out "$out/cpu-resnet20"
    step "loss curves, GPU (f32, bf16) against CPU" 5 python3 - "$out"/{gpu,gpu-bf16,cpu}-resnet20/metrics.jsonl <<'EOF'
import json, sys
def curve(f):
    try:
        return {r["iter"]: r["loss"] for r in map(json.loads, open(f)) if "train_loss" not in r}
    except OSError:
        return {}
gpu, bf16, cpu = map(curve, sys.argv[1:])
nan = float("nan")
for it in sorted(cpu):
    print(f"iter {it:4d}  GPU {gpu.get(it, nan):.4f}  GPU bf16 {bf16.get(it, nan):.4f}  CPU {cpu[it]:.4f}")
for name, c in (("GPU", gpu), ("GPU bf16", bf16)):
    diffs = [abs(c[i] - cpu[i]) / cpu[i] for i in c if i in cpu]
    print(f"{name}: largest relative difference from the CPU:", max(diffs) if diffs else "no common points")
EOF
  fi
  # PyTorch on the same card, the figures ours will stand beside.
  local bench="python3 tools/bench_pytorch.py --device cuda --warmup 5 --steps 20"
  step "PyTorch ResNet-50 batch 256 bf16" 30 $bench --model resnet50 --batch 256 --precision bf16
  step "PyTorch ResNet-50 batch 256 tf32" 30 $bench --model resnet50 --batch 256 --precision tf32
  step "PyTorch ResNet-50 batch 256 bf16, torch.compile" 65 $bench --model resnet50 --batch 256 --precision bf16 --compile
  step "PyTorch ResNet-50 batch 1 f32" 10 $bench --model resnet50 --batch 1
  step "PyTorch ResNet-20 batch 128 f32" 20 $bench --depth 20 --batch 128
  step "PyTorch ResNet-56 batch 128 tf32" 20 $bench --depth 56 --batch 128 --precision tf32
  echo "report: $REPORT"
  return $tests_rc
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: tools/device_check.sh prepare | run [DIR]" >&2; exit 2 ;;
esac
