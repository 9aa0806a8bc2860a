// The execution provider choice: WebGPU is tried only where the Vulkan loader and a driver
// manifest exist, so `EXECUTION_PROVIDERS=webgpu,cpu` starts quietly on CPU elsewhere; a GPU
// provider warms every batch size.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { availableProviders, vulkanMissing, type VulkanPaths } from '../src/inference/providers.js';
import { warmupPlan } from '../src/inference/warmup.js';
import { startProcess } from './helpers/process.js';
import { FIXTURE_MODEL, REPO, tempDir } from './helpers/service.js';

function paths(root: string): VulkanPaths {
  for (const d of ['lib', 'icd.d']) mkdirSync(path.join(root, d), { recursive: true });
  return { libDirs: [path.join(root, 'lib')], ldCache: path.join(root, 'ld.so.cache'), icdDirs: [path.join(root, 'icd.d')] };
}

test('providers: WebGPU needs the Vulkan loader, found in a library folder or in ldconfig\'s cache', (t) => {
  const root = tempDir(t);
  const p = paths(root);
  writeFileSync(path.join(root, 'icd.d', 'nvidia_icd.json'), '{}');
  assert.match(vulkanMissing(p) ?? '', /libvulkan\.so\.1 is not installed.*libvulkan1/);
  writeFileSync(p.ldCache, Buffer.concat([Buffer.from([0, 1, 2]), Buffer.from('libvulkan.so.1\0/usr/lib/x86_64-linux-gnu/libvulkan.so.1\0')]));
  assert.equal(vulkanMissing(p), null, 'named in ld.so.cache');
  const q = paths(path.join(root, 'q'));
  writeFileSync(path.join(q.libDirs[0]!, 'libvulkan.so.1'), '');
  writeFileSync(path.join(q.icdDirs[0]!, 'intel_icd.x86_64.json'), '{}');
  assert.equal(vulkanMissing(q), null, 'in a library folder');
});

test('providers: WebGPU needs a Vulkan driver manifest (the NVIDIA runtime mounts it with the graphics capability)', (t) => {
  const p = paths(tempDir(t));
  writeFileSync(path.join(p.libDirs[0]!, 'libvulkan.so.1'), '');
  assert.match(vulkanMissing(p) ?? '', /no Vulkan driver manifest.*NVIDIA_DRIVER_CAPABILITIES must include graphics/);
  assert.equal(vulkanMissing({ ...p, driverFiles: '/opt/icd/my_icd.json' }), null, 'VK_DRIVER_FILES names one');
  writeFileSync(path.join(p.icdDirs[0]!, 'README'), '');
  assert.notEqual(vulkanMissing(p), null, 'only *.json files are manifests');
});

test('providers: webgpu is left out with its reason where Vulkan is missing; the order of the rest is kept', () => {
  const none = (): string => 'the Vulkan loader libvulkan.so.1 is not installed';
  assert.deepEqual(availableProviders(['webgpu', 'cpu'], null, none),
    { usable: ['cpu'], missing: ['webgpu'], reasons: { webgpu: 'the Vulkan loader libvulkan.so.1 is not installed' } });
  assert.deepEqual(availableProviders(['webgpu', 'cpu'], null, () => null), { usable: ['webgpu', 'cpu'], missing: [], reasons: {} });
  assert.deepEqual(availableProviders(['cpu', 'webgpu'], null, () => null).usable, ['cpu', 'webgpu']);
});

test('providers: WebGPU warms every batch size at every latent size, as CUDA does', () => {
  assert.deepEqual(warmupPlan('webgpu', [[16, 16]], 3), [[1, 16, 16], [2, 16, 16], [3, 16, 16]]);
  assert.deepEqual(warmupPlan('webgpu', undefined, 2), [[1, 64, 64], [2, 64, 64]]);
});

test('providers: EXECUTION_PROVIDERS=webgpu,cpu starts on CPU without a Dawn or ONNX Runtime error where Vulkan is absent', { skip: vulkanMissing() === null && 'this machine has Vulkan' }, async (t) => {
  const svc = await startProcess(t, ['--import', 'tsx', path.join(REPO, 'src', 'server.ts')],
    { EXECUTION_PROVIDERS: 'webgpu,cpu', MODEL_PATH: FIXTURE_MODEL, LOG_LEVEL: 'info', CPU_LIMIT: '2' }, { cwd: REPO });
  const models = await (await fetch(`${svc.url}/v1/models`)).json() as { models: { name: string; provider: string }[] };
  assert.ok(models.models.every((m) => m.provider === 'cpu'), JSON.stringify(models));
  assert.match(svc.output(), /execution provider webgpu not installed \(the Vulkan loader libvulkan\.so\.1 is not installed.*not tried/);
  assert.doesNotMatch(svc.output(), /Couldn't load Vulkan|WebGPU adapter|did not load/, 'WebGPU was not tried');
  // the CPU runs it, so the CPU's session layout applies (PERFORMANCE_HINT=throughput on 2 CPUs)
  assert.match(svc.output(), /CPU provider: 2 session\(s\) per model × 1 thread\(s\) \(PERFORMANCE_HINT=throughput\)/);
  svc.child.kill('SIGTERM');
  assert.equal(await svc.exited, 0);
});
