// Static checks of the Dockerfile (parsed with dockerfile-ast) and of .dockerignore.
// `docker build` itself is not run here (no Docker engine in CI / dev sandbox).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DockerfileParser, JSONInstruction } from 'dockerfile-ast';
import type { Copy, Env, Instruction, Label } from 'dockerfile-ast';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dockerfileText = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const dockerfile = DockerfileParser.parse(dockerfileText);

interface Stage {
  index: number;
  name: string | null;
  /** Base image with global ARG defaults substituted. */
  image: string;
  instructions: Instruction[];
}

/** Global ARGs (before the first FROM) with their default values. */
const globalArgs = new Map<string, string>();
for (const arg of dockerfile.getInitialARGs()) {
  const prop = arg.getProperty();
  if (prop) globalArgs.set(prop.getName(), prop.getValue() ?? '');
}

function expandArgs(value: string): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (m, a?: string, b?: string) => {
    const name = a ?? b ?? '';
    return globalArgs.get(name) ?? m;
  });
}

const stages: Stage[] = [];
for (const instruction of dockerfile.getInstructions()) {
  const keyword = instruction.getKeyword();
  if (keyword === 'FROM') {
    const from = dockerfile.getFROMs()[stages.length];
    assert.ok(from, 'FROM instruction not found by parser');
    stages.push({
      index: stages.length,
      name: from.getBuildStage(),
      image: expandArgs(from.getImage() ?? ''),
      instructions: [],
    });
  } else {
    const current = stages[stages.length - 1];
    if (current) current.instructions.push(instruction);
  }
}

function stage(name: string): Stage {
  const s = stages.find((x) => x.name === name);
  assert.ok(s, `Dockerfile has no stage named "${name}" (stages: ${stages.map((x) => x.name).join(', ')})`);
  return s;
}

function byKeyword(s: Stage, keyword: string): Instruction[] {
  return s.instructions.filter((i) => i.getKeyword() === keyword);
}

/** ENV values visible in a stage (own ENVs only, in order; later wins), up to an optional line. */
function envOf(s: Stage, beforeLine = Number.POSITIVE_INFINITY): Map<string, string> {
  const env = new Map<string, string>();
  for (const i of byKeyword(s, 'ENV')) {
    if (i.getRange().start.line >= beforeLine) continue;
    for (const p of (i as Env).getProperties()) env.set(p.getName(), p.getUnescapedValue() ?? '');
  }
  return env;
}

/** Resolves a stage to the chain of stages it is built FROM (itself first). */
function lineage(s: Stage): Stage[] {
  const chain = [s];
  let cur: Stage | undefined = s;
  while (cur) {
    const parent: Stage | undefined = stages.find((x) => x.name !== null && x.name === cur?.image && x.index < cur.index);
    if (parent) chain.push(parent);
    cur = parent;
  }
  return chain;
}

function rootImage(s: Stage): string {
  const chain = lineage(s);
  return chain[chain.length - 1]?.image ?? '';
}

function jsonArgs(i: Instruction): string[] | null {
  if (!(i instanceof JSONInstruction) || i.getOpeningBracket() === null) return null;
  return i.getJSONStrings().map((s) => s.getJSONValue());
}

function copyFrom(c: Copy): string | null {
  return c.getFromFlag()?.getValue() ?? null;
}

/** COPY/ADD sources (without flags; last argument is the destination). */
function copySources(i: Instruction): string[] {
  const json = jsonArgs(i);
  const args = json ?? i.getArguments().map((a) => a.getValue()).filter((a) => !a.startsWith('--'));
  return args.slice(0, -1);
}

const RUNTIME_TARGETS = ['cpu', 'gpu'] as const;

test('Dockerfile is multi-stage with named cpu and gpu targets', () => {
  assert.ok(stages.length >= 3, `expected build + runtime stages, found ${stages.length}`);
  const names = stages.map((s) => s.name);
  for (const t of RUNTIME_TARGETS) assert.ok(names.includes(t), `missing stage "${t}"`);
  assert.equal(new Set(names.filter(Boolean)).size, names.filter(Boolean).length, 'duplicate stage names');
});

test('the default target (last stage) is the CPU image', () => {
  const last = stages[stages.length - 1];
  assert.ok(last);
  assert.ok(last.name === 'cpu' || last.image === 'cpu', `last stage must be "cpu" or FROM cpu, got ${last.name} FROM ${last.image}`);
  assert.match(rootImage(last), /^node:22[.-]/, 'CPU image must be based on a Node 22 image');
  assert.doesNotMatch(rootImage(last), /cuda/i);
});

test('all Node base images are Node 22 LTS', () => {
  const nodeBases = stages.filter((s) => /^(docker\.io\/)?(library\/)?node:/.test(s.image));
  assert.ok(nodeBases.length > 0);
  for (const s of nodeBases) assert.match(s.image, /node:22([.-]|$)/, `stage ${s.name} uses ${s.image}`);
});

test('gpu stage is based on an nvidia/cuda 12 cuDNN 9 runtime image and gets Node 22', () => {
  const gpu = stage('gpu');
  const base = rootImage(gpu);
  assert.match(base, /^(docker\.io\/)?nvidia\/cuda:12\.\d+(\.\d+)?-cudnn9?-runtime-ubuntu(22|24)\.04$/, `gpu base is ${base}`);
  // Node comes from a Node 22 stage (the CUDA image has no Node).
  const nodeCopy = gpu.instructions
    .filter((i): i is Copy => i.getKeyword() === 'COPY')
    .find((c) => copySources(c).some((src) => /\/bin\/node$/.test(src)));
  assert.ok(nodeCopy, 'gpu stage must COPY the node binary from a Node 22 stage');
  const from = copyFrom(nodeCopy);
  assert.ok(from);
  const src = stages.find((s) => s.name === from);
  assert.match(src ? rootImage(src) : from, /node:22([.-]|$)/);
});

test('gpu node_modules are installed with ONNXRUNTIME_NODE_INSTALL=cuda12, cpu ones without CUDA', () => {
  const nodeModulesSource = (target: string): Stage => {
    const s = stage(target);
    const copy = lineage(s)
      .flatMap((x) => x.instructions)
      .filter((i): i is Copy => i.getKeyword() === 'COPY')
      .find((c) => copySources(c).some((p) => /node_modules\/?$/.test(p)));
    assert.ok(copy, `${target}: no COPY of node_modules`);
    const from = copyFrom(copy);
    assert.ok(from, `${target}: node_modules must be COPY --from a deps/build stage`);
    return stage(from);
  };

  const gpuDeps = nodeModulesSource('gpu');
  const install = byKeyword(gpuDeps, 'RUN').find((r) => /\bnpm (ci|install)\b/.test(r.getArgumentsContent() ?? ''));
  assert.ok(install, `stage ${gpuDeps.name} must run npm ci`);
  const env = envOf(gpuDeps, install.getRange().start.line);
  assert.equal(env.get('ONNXRUNTIME_NODE_INSTALL'), 'cuda12', 'ONNXRUNTIME_NODE_INSTALL=cuda12 must be set before npm ci');
  // .npmrc says onnxruntime-node-install=skip; the env var (read first by install.js) wins, and
  // npm_config_* must not say skip either.
  assert.notEqual(env.get('npm_config_onnxruntime_node_install'), 'skip');
  // The rendered provider library is checked in the same RUN.
  assert.match(install.getArgumentsContent() ?? '', /libonnxruntime_providers_cuda\.so/);

  const cpuDeps = nodeModulesSource('cpu');
  const cpuEnv = envOf(cpuDeps);
  assert.notEqual(cpuEnv.get('ONNXRUNTIME_NODE_INSTALL'), 'cuda12');
});

test('build stage runs npm ci, npm run build and npm prune --omit=dev', () => {
  const cpuDist = lineage(stage('cpu'))
    .flatMap((x) => x.instructions)
    .filter((i): i is Copy => i.getKeyword() === 'COPY')
    .find((c) => copySources(c).some((p) => /dist\/?$/.test(p)));
  assert.ok(cpuDist, 'cpu stage must COPY dist from the build stage');
  const buildName = copyFrom(cpuDist);
  assert.ok(buildName);
  const runs = lineage(stage(buildName))
    .flatMap((s) => byKeyword(s, 'RUN'))
    .map((r) => r.getArgumentsContent() ?? '')
    .join('\n');
  assert.match(runs, /\bnpm ci\b/);
  assert.match(runs, /\bnpm run build\b/);
  assert.match(runs, /\bnpm prune --omit=dev\b/);
});

for (const target of RUNTIME_TARGETS) {
  test(`${target} image: non-root numeric USER, exec-form node CMD, HEALTHCHECK, EXPOSE 8080, ENV, labels`, () => {
    const chain = lineage(stage(target));
    const all = chain.flatMap((s) => s.instructions);
    const last = (kw: string): Instruction | undefined => {
      for (const s of chain) {
        const found = byKeyword(s, kw);
        if (found.length > 0) return found[found.length - 1];
      }
      return undefined;
    };

    const user = last('USER');
    assert.ok(user, 'USER missing');
    const [uid, gid] = (user.getArgumentsContent() ?? '').trim().split(':');
    assert.match(uid ?? '', /^\d+$/, 'USER must be numeric so that runAsNonRoot can verify it');
    assert.notEqual(Number(uid), 0, 'USER must not be root');
    if (gid !== undefined) assert.notEqual(Number(gid), 0);

    const cmd = last('CMD');
    assert.ok(cmd, 'CMD missing');
    const cmdArgs = jsonArgs(cmd);
    assert.ok(cmdArgs, 'CMD must be exec form (JSON array) so that SIGTERM reaches node');
    assert.equal(cmdArgs[0], 'node');
    // the entry point and the thread-pool preload are what the build emits from src/
    const entry = cmdArgs.at(-1) ?? '';
    assert.ok(existsSync(join(ROOT, entry.replace(/^dist\//, 'src/').replace(/\.js$/, '.ts'))), `CMD runs ${entry}, which src/ does not build`);
    const preload = cmdArgs[cmdArgs.indexOf('--require') + 1] ?? '';
    assert.ok(cmdArgs.includes('--require'), 'CMD must preload the thread-pool sizing with --require (an ES import is too late)');
    assert.ok(existsSync(join(ROOT, preload.replace(/^(\.\/)?dist\//, 'src/').replace(/\.cjs$/, '.cts'))), `CMD preloads ${preload}, which src/ does not build`);

    const entrypoint = last('ENTRYPOINT');
    if (entrypoint) {
      const ep = jsonArgs(entrypoint);
      assert.ok(ep, 'ENTRYPOINT must be exec form');
      assert.ok(!ep.some((a) => /npm|sh$/.test(a)), `ENTRYPOINT must not wrap node in npm/sh: ${ep.join(' ')}`);
    }

    const hc = last('HEALTHCHECK');
    assert.ok(hc, 'HEALTHCHECK missing');
    const hcText = hc.getArgumentsContent() ?? '';
    assert.match(hcText, /\bCMD\b/);
    assert.match(hcText, /"node"|\bnode\b/, 'HEALTHCHECK must use node (no curl in slim images)');
    assert.match(hcText, /\/healthz/);
    assert.doesNotMatch(hcText, /\bcurl\b|\bwget\b/);

    const exposed = all.filter((i) => i.getKeyword() === 'EXPOSE').flatMap((i) => i.getArguments().map((a) => a.getValue()));
    assert.ok(exposed.some((p) => p === '8080' || p === '8080/tcp'), `EXPOSE 8080 missing (${exposed.join(',')})`);

    const env = new Map<string, string>();
    for (const s of [...chain].reverse()) for (const [k, v] of envOf(s)) env.set(k, v);
    assert.equal(env.get('NODE_ENV'), 'production');
    // the port the server listens on is the one exposed (8080: the server's default)
    assert.ok(exposed.includes(env.get('PORT') ?? '8080'), `EXPOSE ${exposed.join(',')} vs PORT ${env.get('PORT')}`);
    // MODELS_DIR exists in the image and belongs to the runtime user (the models are written there)
    const runs = all.filter((i) => i.getKeyword() === 'RUN').map((i) => i.getArgumentsContent() ?? '').join('\n');
    assert.match(runs, new RegExp(`mkdir -p ${env.get('MODELS_DIR')}\\b`));
    assert.match(runs, new RegExp(`chown ${uid}(:\\d+)? ${env.get('MODELS_DIR')}\\b`));
    // a fixed pool size would override the sizing from the CPUs the container gets
    assert.equal(env.get('UV_THREADPOOL_SIZE'), undefined);

    const labels = new Set(
      all.filter((i) => i.getKeyword() === 'LABEL').flatMap((i) => (i as Label).getProperties().map((p) => p.getName())),
    );
    for (const key of ['title', 'description', 'source', 'licenses', 'version', 'revision']) {
      assert.ok(labels.has(`org.opencontainers.image.${key}`), `LABEL org.opencontainers.image.${key} missing`);
    }

    // Runtime images carry no dev tooling and no build inputs.
    const runtimeCopies = stage(target).instructions.filter((i) => i.getKeyword() === 'COPY' || i.getKeyword() === 'ADD');
    for (const c of runtimeCopies) {
      assert.ok(copyFrom(c as Copy), `${target}: runtime stage copies only from other stages: ${c.toString()}`);
    }
  });
}

test('every COPY --from refers to an earlier stage', () => {
  for (const s of stages) {
    for (const c of s.instructions.filter((i): i is Copy => i.getKeyword() === 'COPY')) {
      const from = copyFrom(c);
      if (from === null) continue;
      const src = stages.find((x) => x.name === from || String(x.index) === from);
      assert.ok(src, `COPY --from=${from} (stage ${s.name}) refers to no stage`);
      assert.ok(src.index < s.index, `COPY --from=${from} in stage ${s.name} refers to a later stage`);
    }
  }
});

// --- build context -------------------------------------------------------------------------------

const dockerignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
  .split(/\r?\n/)
  .map((l) => l.trim())
  .filter((l) => l !== '' && !l.startsWith('#'));

function globToRegExp(pattern: string): RegExp {
  let re = '';
  const p = posix.normalize(pattern.replace(/^\/+/, '')).replace(/\/+$/, '');
  for (let i = 0; i < p.length; i++) {
    const ch = p[i] ?? '';
    if (ch === '*') {
      if (p[i + 1] === '*') {
        re += '.*';
        i++;
        if (p[i + 1] === '/') i++;
      } else re += '[^/]*';
    } else if (ch === '?') re += '[^/]';
    else re += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/** .dockerignore semantics (simplified): a path is excluded when it or a parent matches; `!` re-includes. */
function isIgnored(path: string): boolean {
  const parts = posix.normalize(path).replace(/\/+$/, '').split('/');
  let ignored = false;
  for (const line of dockerignore) {
    const negate = line.startsWith('!');
    const re = globToRegExp(negate ? line.slice(1) : line);
    for (let n = 1; n <= parts.length; n++) {
      if (re.test(parts.slice(0, n).join('/'))) {
        ignored = !negate;
        break;
      }
    }
  }
  return ignored;
}

test('.dockerignore excludes node_modules, .git, dist, models and test artefacts', () => {
  for (const p of ['node_modules', 'node_modules/sharp/package.json', '.git', '.git/HEAD', 'dist/server.js', 'models/some-vae/model.onnx', 'bench/results/run.json']) {
    assert.ok(isIgnored(p), `.dockerignore must exclude ${p}`);
  }
});

test('files COPYed from the build context exist and are not excluded by .dockerignore', () => {
  const sources = stages.flatMap((s) =>
    s.instructions.filter((i) => (i.getKeyword() === 'COPY' && copyFrom(i as Copy) === null) || i.getKeyword() === 'ADD').flatMap(copySources),
  );
  assert.ok(sources.length > 0);
  for (const required of ['package.json', 'package-lock.json', '.npmrc', 'src']) {
    assert.ok(sources.some((s) => s.replace(/\/+$/, '') === required), `Dockerfile must COPY ${required} from the context`);
  }
  assert.ok(sources.some((s) => /^tsconfig.*\.json$/.test(s)), 'Dockerfile must COPY tsconfig*.json');
  for (const src of sources) {
    assert.doesNotMatch(src, /^(https?:|git@)/, 'no remote ADD sources');
    assert.ok(existsSync(join(ROOT, src)), `COPY source ${src} does not exist in the repository`);
    assert.ok(!isIgnored(src), `COPY source ${src} is excluded by .dockerignore`);
  }
  // The TypeScript build config compiles src/ only, the CommonJS preload (.cts) included.
  const buildTsconfig = JSON.parse(readFileSync(join(ROOT, 'tsconfig.build.json'), 'utf8')) as { include?: string[] };
  assert.ok(buildTsconfig.include?.every((p) => p.startsWith('src/')), 'tsconfig.build.json must only include src/');
  assert.ok(buildTsconfig.include?.some((p) => p.endsWith('*.cts')), 'tsconfig.build.json must build src/*.cts');
});

// --- issue 18: telemetry, the CLI inside, lean node_modules, npm secrets, stop signal -----------

/** ENV of a runtime target, its base stages' included (later wins). */
function runtimeEnv(target: string): Map<string, string> {
  const env = new Map<string, string>();
  for (const s of [...lineage(stage(target))].reverse()) for (const [k, v] of envOf(s)) env.set(k, v);
  return env;
}

test('no `# syntax=` parser directive: the built-in frontend supports the cache and secret mounts', () => {
  assert.equal(dockerfile.getDirectives().length, 0, dockerfileText.split('\n')[0]);
  assert.doesNotMatch(dockerfileText, /^#\s*syntax\s*=/im);
});

for (const target of RUNTIME_TARGETS) {
  test(`${target} image: telemetry off, a writable HOME and HF_HOME, the CLI on PATH, SIGTERM, uid not --system`, () => {
    const env = runtimeEnv(target);
    assert.equal(env.get('ORT_DISABLE_TELEMETRY'), '1');
    // the root file system may be read-only: HOME on /tmp (an emptyDir/tmpfs), the Hub cache on
    // the models volume that `pull` writes to anyway
    assert.equal(env.get('HOME'), '/tmp');
    assert.ok((env.get('HF_HOME') ?? '').startsWith(`${env.get('MODELS_DIR')}/.`), `HF_HOME ${env.get('HF_HOME')} is a dot folder of MODELS_DIR`);
    const chain = lineage(stage(target));
    const all = chain.flatMap((s) => s.instructions);
    const copies = all.filter((i): i is Copy => i.getKeyword() === 'COPY');
    assert.ok(copies.some((c) => copySources(c).some((p) => /^\/app\/bin\/?$/.test(p))), 'bin/ is copied (the `latent-decoder` command)');
    const runs = all.filter((i) => i.getKeyword() === 'RUN').map((i) => i.getArgumentsContent() ?? '').join('\n');
    assert.match(runs, /ln -s \/app\/bin\/latent-decoder\.js \/usr\/local\/bin\/latent-decoder/);
    assert.doesNotMatch(runs, /useradd[^\n]*--system/, 'a --system user must have a uid below 1000 (useradd warns)');
    const stop = all.filter((i) => i.getKeyword() === 'STOPSIGNAL').at(-1);
    assert.equal(stop?.getArgumentsContent(), 'SIGTERM', 'SIGTERM starts the drain');
  });
}

test('every npm ci takes the optional npmrc and npm_ca build secrets and names them when it fails', () => {
  const installs = stages.flatMap((s) => byKeyword(s, 'RUN')).filter((r) => /\bnpm ci\b/.test(r.getArgumentsContent() ?? ''));
  assert.ok(installs.length >= 2, 'the build and gpu-deps stages install');
  const lines = dockerfileText.split('\n');
  for (const r of installs) {
    const text = lines.slice(r.getRange().start.line, r.getRange().end.line + 1).join('\n'); // flags included
    assert.match(text, /--mount=type=secret,id=npmrc,target=\/root\/\.npmrc/);
    assert.match(text, /--mount=type=secret,id=npm_ca,target=(\S+)/);
    const caPath = /--mount=type=secret,id=npm_ca,target=(\S+)/.exec(text)?.[1] ?? '';
    assert.match(text, new RegExp(`NODE_EXTRA_CA_CERTS=${caPath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
    assert.match(text, /\|\|\s*\{\s*echo '[^']*--secret id=npmrc[^']*--secret id=npm_ca/);
  }
});

test('node_modules of both images are pruned of other platforms after install; the GPU one keeps the CUDA provider', () => {
  const runs = (name: string): string => lineage(stage(name)).flatMap((s) => byKeyword(s, 'RUN')).map((r) => r.getArgumentsContent() ?? '').join('\n');
  assert.match(runs('build'), /npm prune --omit=dev[\s\S]*scripts\/prune-native\.sh/);
  const gpu = runs('gpu-deps');
  const prune = gpu.indexOf('scripts/prune-native.sh');
  assert.ok(prune > gpu.indexOf('npm ci'), 'gpu-deps prunes after installing');
  assert.ok(gpu.lastIndexOf('libonnxruntime_providers_cuda.so') > prune, 'and checks the CUDA provider is still there');
});

test('scripts/prune-native.sh keeps this platform (and a CUDA provider beside it), removes the rest, and what is left loads', { skip: process.platform !== 'linux' && 'the images are Linux' }, (t) => {
  // A node_modules with the real packages (linked) plus stand-ins for other platforms' binaries.
  const dir = mkdtempSync(join(tmpdir(), 'ld-prune-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const real = join(ROOT, 'node_modules');
  const here = `${process.platform}/${process.arch}`;
  const ort = join(dir, 'node_modules', 'onnxruntime-node');
  mkdirSync(ort, { recursive: true });
  for (const e of readdirSync(join(real, 'onnxruntime-node'))) if (e !== 'bin') symlinkSync(join(real, 'onnxruntime-node', e), join(ort, e));
  const bin = join(ort, 'bin', 'napi-v6');
  for (const other of ['darwin/arm64', 'win32/x64', 'linux/arm64', 'linux/x64', 'linux/arm64'].filter((p) => p !== here)) {
    mkdirSync(join(bin, other), { recursive: true });
    writeFileSync(join(bin, other, 'onnxruntime_binding.node'), '');
  }
  mkdirSync(join(bin, here), { recursive: true });
  for (const f of readdirSync(join(real, 'onnxruntime-node', 'bin', 'napi-v6', here))) symlinkSync(join(real, 'onnxruntime-node', 'bin', 'napi-v6', here, f), join(bin, here, f));
  writeFileSync(join(bin, here, 'libonnxruntime_providers_cuda.so'), '');
  const img = join(dir, 'node_modules', '@img');
  mkdirSync(img);
  const mine = readdirSync(join(real, '@img')).filter((p) => p.startsWith('sharp-'));
  for (const p of mine) symlinkSync(join(real, '@img', p), join(img, p));
  for (const p of ['sharp-wasm32', 'sharp-darwin-arm64', 'sharp-libvips-linuxmusl-x64', 'sharp-win32-x64']) if (!mine.includes(p)) mkdirSync(join(img, p));
  for (const p of ['sharp', 'onnxruntime-common', '@img/colour']) if (existsSync(join(real, p))) symlinkSync(join(real, p), join(dir, 'node_modules', p));

  const res = spawnSync('sh', [join(ROOT, 'scripts', 'prune-native.sh')], { cwd: dir, encoding: 'utf8' });
  assert.equal(res.status, 0, res.stderr);
  const left = readdirSync(bin).flatMap((p) => readdirSync(join(bin, p)).map((a) => `${p}/${a}`));
  assert.deepEqual(left, [here]);
  assert.ok(existsSync(join(bin, here, 'libonnxruntime_providers_cuda.so')), 'the CUDA provider beside this platform is kept');
  assert.deepEqual(readdirSync(img).filter((p) => p.startsWith('sharp-')).sort(), mine.sort(), "only this platform's sharp packages are left");
  assert.match(res.stdout, /prune-native: kept onnxruntime-node/);
});

test('gpu stage carries the Vulkan loader and asks the NVIDIA runtime for the graphics capability (EXECUTION_PROVIDERS=webgpu)', () => {
  const gpu = stage('gpu');
  const runs = byKeyword(gpu, 'RUN').map((i) => i.getTextContent());
  assert.ok(runs.some((r) => /apt-get install\b[^&]*\blibvulkan1\b/.test(r)), 'the gpu stage must install libvulkan1');
  const caps = (envOf(gpu).get('NVIDIA_DRIVER_CAPABILITIES') ?? '').split(',');
  for (const c of ['compute', 'utility', 'graphics']) assert.ok(caps.includes(c), `NVIDIA_DRIVER_CAPABILITIES lacks ${c}: ${caps.join(',')}`);
});
