#!/bin/sh
# Removes other platforms' native binaries from a production node_modules; run by the image build
# (Dockerfile) in the folder that holds node_modules, on the platform the image is for.
#
# onnxruntime-node's npm package carries ONNX Runtime for every platform it supports under
# bin/napi-v6/<platform>/<arch> (1.30: darwin/arm64 86 MB, win32/x64 64 MB, win32/arm64 70 MB,
# linux/arm64 25 MB, linux/x64 45 MB), and npm installs sharp's @img/sharp-wasm32 (no os/cpu
# field) on every platform. Kept: ONNX Runtime for this platform and arch, with whatever
# execution providers were installed next to it (the GPU image's CUDA provider), and sharp's
# package and libvips for this platform, C library and arch. Then both are loaded to prove it.
set -eu
target=$(node -p 'process.platform + "/" + process.arch')            # e.g. linux/x64
platform=${target%/*}
arch=${target#*/}
# sharp names musl builds "linuxmusl"; Node's report has glibcVersionRuntime only on glibc
libc=$(node -p 'process.platform === "linux" && !process.report.getReport().header.glibcVersionRuntime ? "musl" : ""')

ort=node_modules/onnxruntime-node/bin/napi-v6
for dir in "$ort"/*/*; do
  [ "${dir#"$ort"/}" = "$target" ] || rm -rf "$dir"
done
find "$ort" -mindepth 1 -maxdepth 1 -type d -empty -delete

for dir in node_modules/@img/sharp-*; do
  case "${dir##*/}" in
    "sharp-$platform$libc-$arch" | "sharp-libvips-$platform$libc-$arch") ;;
    *) rm -rf "$dir" ;;
  esac
done

node --input-type=module -e "await import('onnxruntime-node'); await import('sharp');"
echo "prune-native: kept onnxruntime-node $target ($(ls "$ort/$target" | tr '\n' ' ')) and @img/sharp-$platform$libc-$arch"
