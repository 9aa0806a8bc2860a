#!/usr/bin/env bash
# The same benchmark on an NVIDIA GPU: EXECUTION_PROVIDERS=cuda, both models (the ch=32 fixture
# and the full-width ch=128 decoder at 64×64 latents → 512² images), full concurrency levels, and
# the full-width model's images/s set against the floor of ≈ 2.5 TFLOP of work per 512² image
# (achieved TFLOP/s = images/s × 2.5).
#
#   bench/gpu.sh [extra bench/run.ts options, e.g. --env MAX_BATCH_SIZE=16]
#
# Needs: an NVIDIA driver (nvidia-smi), CUDA 12 and cuDNN 9 runtime libraries on the loader path
# (what onnxruntime-node 1.30's CUDA provider links against), and — once — network access to
# ONNX Runtime's NuGet feed if the CUDA provider binaries are not installed yet (npm does not ship
# them; this repository's .npmrc skips them by default).
# Writes bench/results/<date>-<host>-gpu.{md,json,svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
# ONNX Runtime telemetry off, as in the service (src/inference/telemetry.cts), for the check below too
export ORT_DISABLE_TELEMETRY="${ORT_DISABLE_TELEMETRY:-1}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench/gpu.sh: no NVIDIA GPU visible (nvidia-smi missing or failing); run it on a GPU machine" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# onnxruntime-node's CUDA execution provider lives in extra shared libraries next to the binding.
ORT_BIN=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
if [[ ! -f "$ORT_BIN/libonnxruntime_providers_cuda.so" || ! -f "$ORT_BIN/libonnxruntime_providers_shared.so" ]]; then
  echo "installing onnxruntime-node's CUDA 12 provider into $ORT_BIN"
  # the package's own install script; the variable overrides .npmrc's onnxruntime-node-install=skip
  ONNXRUNTIME_NODE_INSTALL=cuda12 npm_config_onnxruntime_node_install=cuda12 \
    node node_modules/onnxruntime-node/script/install.js
  if [[ ! -f "$ORT_BIN/libonnxruntime_providers_cuda.so" ]]; then
    echo "bench/gpu.sh: the CUDA provider did not install; try: ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node" >&2
    exit 1
  fi
fi

# Fail early, with ORT's own message, if the provider cannot load (missing libcudnn, libcublas...).
node -e "
const ort = require('onnxruntime-node');
const fs = require('fs');
const p = process.argv[1];
ort.InferenceSession.create(fs.readFileSync(p), { executionProviders: ['cuda'] })
  .then(() => console.log('CUDA execution provider: OK'))
  .catch((e) => { console.error('CUDA execution provider failed to load: ' + e.message); process.exit(1); });
" "$(realpath test/fixtures/sdvae-ch32/torch-export.onnx)"

# The streaming Wan 2.1 VAE decoder (seeded, base_dim 96) through the service's worker path:
# seconds per output frame and peak host RSS at 512×512 and 832×480, 3 vs 21 latent frames
# (GPU memory: watch nvidia-smi; the caches alone are 2.4 / 3.6 GiB float32).
node --import tsx bench/wan-video.ts --provider cuda --threads 0 --side 64 --frames 3,21
node --import tsx bench/wan-video.ts --provider cuda --threads 0 --side 60x104 --frames 3,21

# The service falls back to the next provider in EXECUTION_PROVIDERS; --gpu sets exactly "cuda",
# so a provider that does not load stops the service instead of silently benchmarking the CPU.
exec node --import tsx bench/run.ts --gpu "$@"
