#!/usr/bin/env bash
# Builds the CPU image and runs it as a user would, with Docker or podman; not part of CI (a build
# takes minutes). Linux: the containers use the host's network, so that `latent-decoder pull`
# inside one reaches a stand-in for the Hugging Face Hub on the host's loopback.
#
#   scripts/container-smoke.sh
#   CONTAINER_ENGINE=podman NPM_CA=/etc/ssl/certs/ca-certificates.crt scripts/container-smoke.sh
#
# Environment: CONTAINER_ENGINE (docker or podman; default: docker when its daemon answers, else
# podman), IMAGE (default latent-decoder:smoke), NPMRC and NPM_CA (files passed as the npmrc and
# npm_ca build secrets: a private registry, a TLS-intercepting proxy), SKIP_BUILD=1 (use IMAGE as
# it is), DRAIN_BOUND_S (default 35: DRAIN_TIMEOUT_MS plus a margin).
#
# Checks, in order; the first failure stops it with exit 1:
#  1. the image builds (target cpu); its size is printed;
#  2. `latent-decoder pull` in the image (read-only root, all capabilities dropped) downloads the
#     test fixture test/fixtures/sdvae-ch32 from the stand-in Hub and converts it into a volume;
#  3. the server, on that volume mounted read-only, becomes ready, runs as uid 10001, serves the
#     model, decodes the fixture latents to within one level of reference-rgb.npy, answers /metrics;
#  4. ONNX Runtime telemetry is off: no ~/.cache/Microsoft in the container, no telemetry line in
#     the log, and every log line is JSON;
#  5. SIGTERM during a request: the request is answered, the container exits 0 within the bound.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ENGINE=${CONTAINER_ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
  elif command -v podman >/dev/null; then ENGINE=podman
  else echo "container-smoke: neither a Docker daemon nor podman" >&2; exit 2; fi
fi
IMAGE=${IMAGE:-latent-decoder:smoke}
DRAIN_BOUND_S=${DRAIN_BOUND_S:-35}
RUN_ID=ld-smoke-$$
VOLUME=$RUN_ID-models
WORK=$(mktemp -d)
HUB_PID=
started=$(date +%s)

step() { printf '\n== %s (%ss)\n' "$*" $(( $(date +%s) - started )); }
fail() {
  echo "container-smoke: FAIL: $*" >&2
  "$ENGINE" logs --tail 20 "$RUN_ID" 2>/dev/null | sed 's/^/  server log: /' >&2
  exit 1
}
cleanup() {
  set +e
  [ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null
  "$ENGINE" rm -f "$RUN_ID" >/dev/null 2>&1
  "$ENGINE" volume rm -f "$VOLUME" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
# podman: docker image format (keeps HEALTHCHECK); no health-check timers (they need systemd)
BUILD_FLAGS=(); RUN_FLAGS=(--network host)
if [ "$ENGINE" = podman ]; then BUILD_FLAGS+=(--format docker --pull=never --network host); RUN_FLAGS+=(--no-healthcheck); fi
[ -n "${NPMRC:-}" ] && BUILD_FLAGS+=(--secret "id=npmrc,src=$NPMRC")
[ -n "${NPM_CA:-}" ] && BUILD_FLAGS+=(--secret "id=npm_ca,src=$NPM_CA")
# as the Deployment runs it: read-only root, /tmp writable, no capabilities, no privilege gain
LOCKED=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges)

echo "engine: $ENGINE $("$ENGINE" --version 2>/dev/null | head -1)"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step "1. build $IMAGE (target cpu)"
  t0=$(date +%s)
  "$ENGINE" build "${BUILD_FLAGS[@]}" --target cpu -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "the build failed"; }
  grep -E 'prune-native:' "$WORK/build.log" || true
  echo "built in $(( $(date +%s) - t0 )) s"
fi
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "image size: $size bytes ($(( size / 1000000 )) MB)"

step "2. latent-decoder pull from a stand-in Hub on 127.0.0.1"
HUB_PORT=$(free_port)
cat >"$WORK/hub.mjs" <<'EOF'
// The Hub's resolve protocol for one repository: small files 200 with their git blob SHA-1 as
// ETag, *.safetensors a 302 to storage with X-Linked-Etag (SHA-256) and X-Linked-Size.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
const [port, weightsPath] = process.argv.slice(2);
const commit = 'c'.repeat(40);
const files = {
  'vae/config.json': Buffer.from(JSON.stringify({ _class_name: 'AutoencoderKL', latent_channels: 4, scaling_factor: 0.18215 })),
  'vae/diffusion_pytorch_model.safetensors': readFileSync(weightsPath),
};
const sha256 = (b) => createHash('sha256').update(b).digest('hex');
const blobs = new Map(Object.values(files).map((b) => [sha256(b), b]));
createServer((req, res) => {
  console.log(req.method, req.url);
  const storage = /^\/storage\/([0-9a-f]{64})$/.exec(req.url);
  if (storage && blobs.has(storage[1])) return void res.writeHead(200, { 'content-length': blobs.get(storage[1]).length }).end(blobs.get(storage[1]));
  const m = /^\/acme\/sdvae-ch32\/resolve\/([^/]+)\/(.+)$/.exec(req.url);
  if (!m) return void res.writeHead(404, { 'x-error-code': 'RepoNotFound' }).end();
  const body = files[m[2]];
  if (!body) return void res.writeHead(404, { 'x-error-code': 'EntryNotFound', 'x-repo-commit': commit }).end();
  if (m[2].endsWith('.safetensors')) {
    return void res.writeHead(302, { location: `/storage/${sha256(body)}`, 'x-repo-commit': commit, 'x-linked-size': body.length, 'x-linked-etag': `"${sha256(body)}"` }).end();
  }
  const etag = createHash('sha1').update(`blob ${body.length}\0`).update(body).digest('hex');
  res.writeHead(200, { etag: `"${etag}"`, 'x-repo-commit': commit, 'content-length': body.length });
  res.end(req.method === 'HEAD' ? undefined : body);
}).listen(Number(port), '127.0.0.1');
EOF
node "$WORK/hub.mjs" "$HUB_PORT" "$ROOT/test/fixtures/sdvae-ch32/diffusers.safetensors" >"$WORK/hub.log" 2>&1 &
HUB_PID=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$HUB_PORT/" && break; sleep 0.1; done
"$ENGINE" volume create "$VOLUME" >/dev/null
"$ENGINE" run --rm "${RUN_FLAGS[@]}" "${LOCKED[@]}" -v "$VOLUME:/models" -e "HF_ENDPOINT=http://127.0.0.1:$HUB_PORT" \
  "$IMAGE" latent-decoder pull acme/sdvae-ch32 --name sdvae-ch32 2>&1 | tee "$WORK/pull.log" | grep -v '^downloading\|^converting' || true
grep -q 'sdvae-ch32/model.onnx' "$WORK/pull.log" || fail "pull did not write /models/sdvae-ch32/model.onnx"
echo "stand-in Hub requests: $(tr '\n' ';' <"$WORK/hub.log")"
"$ENGINE" run --rm "${RUN_FLAGS[@]}" -v "$VOLUME:/models:ro" "$IMAGE" latent-decoder models

step "3. serve it (models volume read-only)"
PORT=$(free_port)
URL=http://127.0.0.1:$PORT
"$ENGINE" run -d --name "$RUN_ID" "${RUN_FLAGS[@]}" "${LOCKED[@]}" -v "$VOLUME:/models:ro" \
  -e HOST=127.0.0.1 -e "PORT=$PORT" -e DEFAULT_MODEL=sdvae-ch32 "$IMAGE" >/dev/null
t0=$(date +%s)
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ]; do
  [ "$("$ENGINE" inspect --format '{{.State.Running}}' "$RUN_ID")" = true ] || { "$ENGINE" logs "$RUN_ID"; fail "the server exited"; }
  [ $(( $(date +%s) - t0 )) -lt 120 ] || { "$ENGINE" logs "$RUN_ID"; fail "not ready in 120 s"; }
  sleep 0.5
done
echo "ready in $(( $(date +%s) - t0 )) s"
uid=$("$ENGINE" exec "$RUN_ID" stat -c %u /proc/1)
[ "$uid" = 10001 ] || fail "the server runs as uid $uid"
echo "server uid: $uid"
curl -sf "$URL/v1/models" | node -e "const m=JSON.parse(require('fs').readFileSync(0,'utf8')); console.log('models:', m.models.map((x)=>x.name).join(', '), '| default:', m.defaultModel); process.exit(m.defaultModel==='sdvae-ch32'?0:1)" \
  || fail "the pulled model is not the default"
# the first fixture latent (decoder space) as .npy; the PNG against reference-rgb.npy
node --input-type=module -e "
import { readFileSync, writeFileSync } from 'node:fs';
const npy = readFileSync('test/fixtures/sdvae-ch32/latents.npy');
const hl = npy.readUInt16LE(8), data = npy.subarray(10 + hl, 10 + hl + 4 * 16 * 16 * 4);
let header = \"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 16, 16), }\";
header = header.padEnd(128 - 10 - 1) + '\n'; // data 64-byte aligned, as NumPy writes it
writeFileSync('$WORK/one.npy', Buffer.concat([npy.subarray(0, 8), Buffer.from([header.length, 0]), Buffer.from(header), data]));
"
code=$(curl -s -o "$WORK/out.png" -w '%{http_code}' -H 'content-type: application/x-npy' --data-binary "@$WORK/one.npy" "$URL/decode?scaling_factor=1&format=png")
[ "$code" = 200 ] || fail "decode answered $code: $(cat "$WORK/out.png")"
node --input-type=module -e "
import { readFileSync } from 'node:fs';
import sharp from 'sharp';
const ref = readFileSync('test/fixtures/sdvae-ch32/reference-rgb.npy');
const want = ref.subarray(10 + ref.readUInt16LE(8)).subarray(0, 128 * 128 * 3);
const { data, info } = await sharp('$WORK/out.png').raw().toBuffer({ resolveWithObject: true });
let max = 0;
for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(data[i] - want[i]));
console.log('decode: ' + info.width + 'x' + info.height + ' PNG, max difference from reference-rgb.npy: ' + max + ' level(s)');
process.exit(info.width === 128 && info.height === 128 && info.channels === 3 && max <= 1 ? 0 : 1);
" || fail "the decoded image differs from the reference"
curl -sf "$URL/metrics" >"$WORK/metrics.txt" || fail "/metrics"
grep -q '^latent_decoder_' "$WORK/metrics.txt" || fail "/metrics has no latent_decoder_ series"
echo "/metrics: $(grep -c '^latent_decoder_' "$WORK/metrics.txt") latent_decoder_ samples"

step "4. telemetry off, JSON log"
"$ENGINE" exec "$RUN_ID" sh -c 'echo "ORT_DISABLE_TELEMETRY=$ORT_DISABLE_TELEMETRY HOME=$HOME"; ! ls -A "$HOME/.cache/Microsoft" 2>/dev/null' \
  || fail "ONNX Runtime wrote telemetry files under HOME"

step "5. SIGTERM while a request runs"
# a 512x512 decode in flight when the signal arrives
node -e "require('fs').writeFileSync('$WORK/big.bin', Buffer.from(new Float32Array(4*64*64).map((_, i) => Math.cos(i / 97)).buffer))"
curl -s -o "$WORK/big.png" -w '%{http_code}' -H 'content-type: application/octet-stream' --data-binary "@$WORK/big.bin" "$URL/decode?scaling_factor=1" >"$WORK/big.code" &
CURL_PID=$!
sleep 0.3
t0=$(date +%s%N)
"$ENGINE" kill --signal TERM "$RUN_ID" >/dev/null
exit_code=$(timeout "$DRAIN_BOUND_S" "$ENGINE" wait "$RUN_ID" || echo timeout)
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
wait "$CURL_PID" || true
echo "exit code $exit_code after $ms ms; the request in flight got HTTP $(cat "$WORK/big.code")"
[ "$exit_code" = 0 ] || fail "exit code $exit_code (bound ${DRAIN_BOUND_S} s)"
[ "$(cat "$WORK/big.code")" = 200 ] || fail "the request in flight was not answered 200"

"$ENGINE" logs "$RUN_ID" >"$WORK/server.log" 2>&1
lines=$(grep -c . "$WORK/server.log" || true)
if grep -qi telemetry "$WORK/server.log"; then grep -i telemetry "$WORK/server.log"; fail "a telemetry line in the log"; fi
node -e "
const lines = require('fs').readFileSync('$WORK/server.log', 'utf8').split('\n').filter((l) => l.trim());
const bad = lines.filter((l) => { try { JSON.parse(l); return false; } catch { return true; } });
if (bad.length) { console.error(bad.join('\n')); process.exit(1); }
" || fail "log lines that are not JSON (above)"
echo "log: $lines lines, all JSON, none about telemetry; at SIGTERM: $(grep -o '"inflight":[0-9]*' "$WORK/server.log" | head -1)"

step "PASS: $IMAGE, $(( size / 1000000 )) MB"
"$ENGINE" images "$IMAGE"
