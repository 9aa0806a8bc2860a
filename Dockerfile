# syntax=docker/dockerfile:1.7
#
# latent-decoder container images.
#
#   docker build -t latent-decoder:cpu .                 # default target = CPU image (last stage)
#   docker build -t latent-decoder:cpu --target cpu .    # same, explicit
#   docker build -t latent-decoder:gpu --target gpu .    # CUDA 12 + cuDNN 9 image
#
# Models are NOT baked into the image: they are delivered at runtime into MODELS_DIR (/models),
# e.g. by `node dist/cli.js pull <hf-repo-id> --name NAME --models-dir /models` (see deploy/).
# With no model configured, the service serves its built-in preview model.

# CUDA base for the gpu target. onnxruntime-node 1.30's CUDA execution provider links against
# CUDA 12 + cuDNN 9; any nvidia/cuda 12.x "cudnn-runtime" tag (cuDNN 9) works. CUDA 12.8 needs a
# host driver >= 570 (or use e.g. 12.6.3-cudnn-runtime-ubuntu24.04 for driver >= 560).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=""

# ---------------------------------------------------------------------------------------------
# build: install all dependencies, compile TypeScript, then drop devDependencies.
# onnxruntime-node's postinstall is told to skip the CUDA provider download (CPU binaries are
# bundled in the npm package); the repo's .npmrc says the same, the ENV makes it explicit.
# ---------------------------------------------------------------------------------------------
FROM node:22-bookworm-slim AS build
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=skip \
    npm_config_onnxruntime_node_install=skip
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

# ---------------------------------------------------------------------------------------------
# gpu-deps: production node_modules with the CUDA 12 execution provider.
# onnxruntime-node/script/install.js reads ONNXRUNTIME_NODE_INSTALL first, then
# npm_config_onnxruntime_node_install (which .npmrc sets to "skip"); both are overridden here
# so the postinstall downloads the CUDA 12 provider libraries (needs network at build time).
# ---------------------------------------------------------------------------------------------
FROM node:22-bookworm-slim AS gpu-deps
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=cuda12 \
    npm_config_onnxruntime_node_install=cuda12
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --no-audit --no-fund \
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
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /models \
 && chown 10001:10001 /models \
 && node --version
WORKDIR /app
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    MODELS_DIR=/models \
    EXECUTION_PROVIDERS=cuda,cpu \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/dist ./dist
COPY --from=gpu-deps /app/node_modules ./node_modules
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"]
# No shell or wrapper script as PID 1: SIGTERM goes straight to Node (graceful drain).
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
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /models \
 && chown 10001:10001 /models
WORKDIR /app
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    MODELS_DIR=/models \
    EXECUTION_PROVIDERS=cpu
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/dist ./dist
COPY --from=build /app/node_modules ./node_modules
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"]
# No shell or wrapper script as PID 1: SIGTERM goes straight to Node (graceful drain).
# The CommonJS preload sizes libuv's pool (sharp encodes on it) before the ESM loader starts it
# with 4 threads: max(4, CPU_LIMIT or the visible cores) unless UV_THREADPOOL_SIZE is given
# (`docker run -e UV_THREADPOOL_SIZE=8`). No fixed ENV here: the image cannot know the CPUs it gets.
ENTRYPOINT []
CMD ["node", "--require", "./dist/threadpool.cjs", "dist/server.js"]
