#!/usr/bin/env bash
# WebGPU on a GPU machine without Node (the `device` tool's H200: CUDA 13, PyTorch, no network),
# in one run of at most ~10 minutes. Prepare here with bench/pack-gpu.sh, then run it there:
#   device run: command "bash bench/gpu-webgpu.sh", carry [".gpu"], timeout_s 600
# It unpacks the Vulkan loader and the bundle (Node 22 + the project), then writes to $OUT:
#   webgpu.json / webgpu.log   bench/webgpu.ts: the fixture and the full-width ch=128 decoder on
#                              WebGPU, fp32 and fp16, batch 1/4/8/16: warm-up per shape, img/s,
#                              CPU-ms per image; the fixture's levels off reference-rgb.npy
#   cpu-side.{json,md,svg}     bench/cpu-side.ts --quick: the service's CPU per image on the
#                              null decoder (what one core feeds the GPU), on this machine's CPUs
#   torch.json / torch.log     bench/torch_vae_decode.py: PyTorch's own fp32/fp16 decode of the
#                              same seeded weights (the anchor), checked on the fixture first
# Locally (`OUT=/tmp/x LOCAL=1 bash bench/gpu-webgpu.sh`) it runs the same steps on the CPU
# provider with short phases, from this checkout, skipping what needs a GPU.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
T0=$SECONDS
step() { echo "== $(( SECONDS - T0 )) s: $*"; }

if [[ -z "${LOCAL:-}" ]]; then
  step "Vulkan loader and the bundle"
  for f in .gpu/*.deb; do [[ -f $f ]] && dpkg -x "$f" /; done
  ldconfig
  # the NVIDIA container runtime mounts the driver's Vulkan manifest here when it is not in /etc or /usr/share
  if [[ -z "${VK_DRIVER_FILES:-}" && -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  mkdir -p /tmp/ld && tar -xJf .gpu/bundle.tar.xz -C /tmp/ld || { echo "bundle missing: run bench/pack-gpu.sh and carry .gpu"; exit 2; }
  export PATH=/tmp/ld/node/bin:$PATH
  cd /tmp/ld/app
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  ldconfig -p | grep -i vulkan | tee -a "$OUT/gpu.txt"
  PROVIDER=webgpu SECS=2 PY_SECS=2
else
  PROVIDER=cpu SECS=0.5 PY_SECS=0
fi
node --version

step "WebGPU: fixture and full width, fp32 and fp16, batch 1/4/8/16"
LARGE=(); [[ -n "${LOCAL:-}" ]] && LARGE=(--no-large --batches 1,4)
timeout 330 node --import tsx bench/webgpu.ts --provider "$PROVIDER" --seconds "$SECS" "${LARGE[@]}" --out "$OUT/webgpu.json" 2>&1 | tee "$OUT/webgpu.log" | tail -40

step "the CPU side on this machine (null decoder, JPEG and raw uint8 at c=8)"
timeout 120 node --import tsx bench/cpu-side.ts --quick --out "$OUT/cpu-side" 2>&1 | tail -20

if [[ -z "${LOCAL:-}" ]]; then
  step "PyTorch anchor: the same seeded weights, fp32 and fp16"
  W=bench/results/tmp/models/sdvae-ch128.safetensors
  PYTHONUNBUFFERED=1 timeout 150 python3 bench/torch_vae_decode.py "$W" --side 64 --batches 1,4,8,16 --seconds "$PY_SECS" \
    --check test/fixtures/sdvae-ch32 --out "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log" | tail -12
fi
step "done"
