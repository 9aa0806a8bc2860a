# latent-decoder container images.
#
#   docker build -t latent-decoder:cpu .                 # default target = CPU image (last stage)
#   docker build -t latent-decoder:cpu --target cpu .    # same, explicit
#   docker build -t latent-decoder:gpu --target gpu .    # CUDA 12 + cuDNN 9 image
#   podman build --format docker -t latent-decoder:cpu . # podman/buildah (docker format keeps HEALTHCHECK)
#
# Docker's built-in BuildKit frontend (Docker >= 23, or DOCKER_BUILDKIT=1) and podman both support
# the cache and secret mounts below; there is no `# syntax=` line, so nothing is pulled to parse it.
#
# Private npm registry, or a TLS-intercepting proxy: give npm its configuration and the proxy's CA
# as build secrets (optional; mounted only while npm runs, never stored in a layer):
#   docker build --secret id=npmrc,src=$HOME/.npmrc --secret id=npm_ca,src=/path/to/proxy-ca.pem .
# `npmrc` becomes root's user .npmrc (registry=, //host/:_authToken=, proxy=); `npm_ca` (PEM)
# is added to Node's trust store (NODE_EXTRA_CA_CERTS) for npm and for the GPU stage's download
# of ONNX Runtime's CUDA provider.
#
# Models are NOT baked into the image: they are delivered at runtime into MODELS_DIR (/models),
# e.g. `docker run -v models:/models latent-decoder:cpu latent-decoder pull <hf-repo-id>` (README,
# "Container images"; deploy/ for Kubernetes). With no model, the built-in preview model is served.
#
# Stopping: SIGTERM (the default STOPSIGNAL) drains accepted requests for up to DRAIN_TIMEOUT_MS
# (30 s by default). `docker stop` waits 10 s before SIGKILL, so give it more: `docker stop -t 40`,
# `docker run --stop-timeout 40`, compose `stop_grace_period: 40s` (a Dockerfile cannot set it).
#
# ONNX Runtime telemetry is off (ORT_DISABLE_TELEMETRY=1 below; the process sets it too).
# `-e ORT_DISABLE_TELEMETRY=0` turns it on.

# CUDA base for the gpu target. onnxruntime-node 1.30's CUDA execution provider links against
# CUDA 12 + cuDNN 9; any nvidia/cuda 12.x "cudnn-runtime" tag (cuDNN 9) works. CUDA 12.8 needs a
# host driver >= 570 (or use e.g. 12.6.3-cudnn-runtime-ubuntu24.04 for driver >= 560).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=""

# ---------------------------------------------------------------------------------------------
# build: install all dependencies, compile TypeScript, drop devDependencies and other platforms'
# native binaries (scripts/prune-native.sh: ~250 MB of onnxruntime-node's darwin, win32 and
# linux-arm64 builds and sharp's wasm32 build). onnxruntime-node's postinstall is told to skip the
# CUDA provider download (CPU binaries are bundled in the npm package); the repo's .npmrc says the
# same, the ENV makes it explicit.
# ---------------------------------------------------------------------------------------------
FROM node:22-bookworm-slim AS build
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=skip \
    npm_config_onnxruntime_node_install=skip
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=cache,target=/root/.npm \
    --mount=type=secret,id=npmrc,target=/root/.npmrc \
    --mount=type=secret,id=npm_ca,target=/run/secrets/npm_ca \
    if [ -s /run/secrets/npm_ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/npm_ca; fi \
 && { npm ci --no-audit --no-fund \
      || { echo 'npm ci failed. Behind a private registry or a TLS-intercepting proxy? Build with --secret id=npmrc,src=<your .npmrc> and/or --secret id=npm_ca,src=<CA .pem> (see the top of this Dockerfile).' >&2; exit 1; }; }
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY bin ./bin
COPY scripts/prune-native.sh ./scripts/
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund \
 && sh scripts/prune-native.sh

# ---------------------------------------------------------------------------------------------
# gpu-deps: production node_modules with the CUDA 12 execution provider, other platforms pruned.
# onnxruntime-node/script/install.js reads ONNXRUNTIME_NODE_INSTALL first, then
# npm_config_onnxruntime_node_install (which .npmrc sets to "skip"); both are overridden here
# so the postinstall downloads the CUDA 12 provider libraries (needs network at build time).
# ---------------------------------------------------------------------------------------------
FROM node:22-bookworm-slim AS gpu-deps
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=cuda12 \
    npm_config_onnxruntime_node_install=cuda12
COPY package.json package-lock.json .npmrc ./
COPY scripts/prune-native.sh ./scripts/
RUN --mount=type=cache,target=/root/.npm \
    --mount=type=secret,id=npmrc,target=/root/.npmrc \
    --mount=type=secret,id=npm_ca,target=/run/secrets/npm_ca \
    if [ -s /run/secrets/npm_ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/npm_ca; fi \
 && { npm ci --omit=dev --no-audit --no-fund \
      || { echo 'npm ci failed. Behind a private registry or a TLS-intercepting proxy? Build with --secret id=npmrc,src=<your .npmrc> and/or --secret id=npm_ca,src=<CA .pem> (see the top of this Dockerfile).' >&2; exit 1; }; } \
 && test -f node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so \
 && sh scripts/prune-native.sh \
 && test -f node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so

# Node 22 LTS runtime, used as the source of the node binary for the CUDA image.
FROM node:22-bookworm-slim AS node-runtime

# ---------------------------------------------------------------------------------------------
# gpu: nvidia/cuda runtime (CUDA 12 + cuDNN 9) with the Node 22 binary copied in.
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ARG VERSION
ARG REVISION
ARG SOURCE_URL
LABEL org.opencontainers.image.title="latent-decoder" \
      org.opencontainers.image.description="Stable Diffusion latent -> image decoding service (ONNX Runtime VAE decoder, CUDA 12 + cuDNN 9)" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="nvidia/cuda"
COPY --from=node-runtime /usr/local/bin/node /usr/local/bin/node
# uid 10001: above the range a distribution gives its own users and services. Not --system (that
# range ends at 999: useradd warned); --no-log-init: no sparse lastlog entry for a high uid.
# `latent-decoder` on PATH runs the CLI (bin/ is copied below).
# libvulkan1: the Vulkan loader for EXECUTION_PROVIDERS=webgpu (Dawn, bundled in onnxruntime-node);
# the NVIDIA container runtime mounts the driver's Vulkan part only with the graphics capability.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvulkan1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 app \
 && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /tmp --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /models \
 && chown 10001:10001 /models \
 && ln -s /app/bin/latent-decoder.js /usr/local/bin/latent-decoder \
 && node --version
WORKDIR /app
# HOME: the root file system may be read-only (Kubernetes mounts /tmp; `docker run --read-only
# --tmpfs /tmp`); nothing of the server's lives there, npm's cache (npx) does. HF_HOME: the
# Hugging Face download cache of `latent-decoder pull`, on the models volume it converts into.
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    MODELS_DIR=/models \
    HOME=/tmp \
    HF_HOME=/models/.cache/huggingface \
    ORT_DISABLE_TELEMETRY=1 \
    EXECUTION_PROVIDERS=cuda,cpu \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
COPY --from=gpu-deps /app/node_modules ./node_modules
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"]
# No shell or wrapper script as PID 1: SIGTERM goes straight to Node (graceful drain, up to
# DRAIN_TIMEOUT_MS = 30 s: stop with `docker stop -t 40`, not the default 10 s).
STOPSIGNAL SIGTERM
# The CommonJS preload sizes libuv's pool (sharp encodes on it) before the ESM loader starts it
# with 4 threads: max(4, CPU_LIMIT or the visible cores) unless UV_THREADPOOL_SIZE is given
# (`docker run -e UV_THREADPOOL_SIZE=8`). No fixed ENV here: the image cannot know the CPUs it gets.
ENTRYPOINT []
CMD ["node", "--require", "./dist/threadpool.cjs", "dist/server.js"]

# ---------------------------------------------------------------------------------------------
# cpu (default target: last stage): Debian bookworm slim + Node 22 LTS.
# ---------------------------------------------------------------------------------------------
FROM node:22-bookworm-slim AS cpu
ARG VERSION
ARG REVISION
ARG SOURCE_URL
LABEL org.opencontainers.image.title="latent-decoder" \
      org.opencontainers.image.description="Stable Diffusion latent -> image decoding service (ONNX Runtime VAE decoder, CPU)" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/node:22-bookworm-slim"
# uid 10001: above the range a distribution gives its own users and services. Not --system (that
# range ends at 999: useradd warned); --no-log-init: no sparse lastlog entry for a high uid.
# `latent-decoder` on PATH runs the CLI (bin/ is copied below).
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /tmp --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /models \
 && chown 10001:10001 /models \
 && ln -s /app/bin/latent-decoder.js /usr/local/bin/latent-decoder
WORKDIR /app
# HOME: the root file system may be read-only (Kubernetes mounts /tmp; `docker run --read-only
# --tmpfs /tmp`); nothing of the server's lives there, npm's cache (npx) does. HF_HOME: the
# Hugging Face download cache of `latent-decoder pull`, on the models volume it converts into.
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    MODELS_DIR=/models \
    HOME=/tmp \
    HF_HOME=/models/.cache/huggingface \
    ORT_DISABLE_TELEMETRY=1 \
    EXECUTION_PROVIDERS=cpu
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
COPY --from=build /app/node_modules ./node_modules
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"]
# No shell or wrapper script as PID 1: SIGTERM goes straight to Node (graceful drain, up to
# DRAIN_TIMEOUT_MS = 30 s: stop with `docker stop -t 40`, not the default 10 s).
STOPSIGNAL SIGTERM
# The CommonJS preload sizes libuv's pool (sharp encodes on it) before the ESM loader starts it
# with 4 threads: max(4, CPU_LIMIT or the visible cores) unless UV_THREADPOOL_SIZE is given
# (`docker run -e UV_THREADPOOL_SIZE=8`). No fixed ENV here: the image cannot know the CPUs it gets.
ENTRYPOINT []
CMD ["node", "--require", "./dist/threadpool.cjs", "dist/server.js"]
