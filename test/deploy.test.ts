// Renders the kustomize overlays with `kubectl kustomize`, validates every rendered object against
// the Kubernetes OpenAPI schemas (kubernetes-models; prometheus-operator CRD schemas for the
// ServiceMonitor), then checks the deployment semantics on the parsed objects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { loadConfig } from '../src/config.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** The gauge the service exports and the HPA scales on. */
const QUEUE_GAUGE = 'latent_decoder_queue_samples';
const OVERLAYS = ['cpu', 'gpu'] as const;
type Overlay = (typeof OVERLAYS)[number];

// ---------------------------------------------------------------------------------------------
// Loose structural types for the assertions (the schema validation is done by kubernetes-models).
// ---------------------------------------------------------------------------------------------
type Obj = Record<string, unknown>;
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [key: string]: unknown;
}
interface Probe {
  httpGet?: { path?: string; port?: number | string };
  periodSeconds?: number;
  failureThreshold?: number;
  timeoutSeconds?: number;
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    configMapKeyRef?: { name: string; key: string; optional?: boolean };
    secretKeyRef?: { name: string; key: string; optional?: boolean };
    resourceFieldRef?: { containerName?: string; resource: string; divisor?: string | number };
  };
}
interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: EnvVar[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { sleep?: { seconds: number }; exec?: { command: string[] } } };
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  securityContext?: {
    runAsNonRoot?: boolean;
    runAsUser?: number;
    readOnlyRootFilesystem?: boolean;
    allowPrivilegeEscalation?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
    privileged?: boolean;
  };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  terminationGracePeriodSeconds?: number;
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; seccompProfile?: { type: string } };
  volumes?: { name: string; emptyDir?: Obj; persistentVolumeClaim?: Obj }[];
  tolerations?: { key?: string; operator?: string; effect?: string }[];
  nodeSelector?: Record<string, string>;
  automountServiceAccountToken?: boolean;
}
interface Deployment extends K8sObject {
  spec: {
    replicas?: number;
    selector: { matchLabels: Record<string, string> };
    template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
  };
}
interface LabelSelector {
  matchLabels?: Record<string, string>;
}

// ---------------------------------------------------------------------------------------------
// kubectl / kustomize
// ---------------------------------------------------------------------------------------------
const kubectlProbe = spawnSync('kubectl', ['version', '--client', '--output=json'], { encoding: 'utf8' });
const kubectlMissing: string | null =
  kubectlProbe.error !== undefined
    ? `kubectl not found on PATH: ${kubectlProbe.error.message}`
    : kubectlProbe.status !== 0
      ? `kubectl not usable: ${kubectlProbe.stderr}`
      : null;

const rendered = new Map<Overlay, K8sObject[]>();
function render(overlay: Overlay): K8sObject[] {
  const cached = rendered.get(overlay);
  if (cached) return cached;
  const dir = join(ROOT, 'deploy', 'overlays', overlay);
  const res = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
  assert.equal(res.status, 0, `kubectl kustomize ${dir} failed:\n${res.stderr}`);
  const objects = parseDocs(res.stdout, `overlay ${overlay}`);
  rendered.set(overlay, objects);
  return objects;
}

function parseDocs(text: string, what: string): K8sObject[] {
  const docs = parseAllDocuments(text);
  const objects: K8sObject[] = [];
  for (const doc of docs) {
    assert.deepEqual(doc.errors, [], `${what}: YAML errors`);
    const value = doc.toJS() as unknown;
    if (value === null || value === undefined) continue;
    assert.equal(typeof value, 'object', `${what}: document is not an object`);
    objects.push(value as K8sObject);
  }
  return objects;
}

// ---------------------------------------------------------------------------------------------
// Schema validation with kubernetes-models (generated from the Kubernetes OpenAPI spec) and
// @kubernetes-models/prometheus-operator (generated from the prometheus-operator CRDs).
// ---------------------------------------------------------------------------------------------
interface ModelClass {
  new (data: unknown): { validate(): void };
  apiVersion: string;
  kind: string;
}

/** Third-party API groups: package that holds their models. */
const CRD_PACKAGES: Record<string, string> = {
  'monitoring.coreos.com': '@kubernetes-models/prometheus-operator',
};

async function modelFor(apiVersion: string, kind: string): Promise<ModelClass | undefined> {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  const pkg = group && CRD_PACKAGES[group] ? CRD_PACKAGES[group] : 'kubernetes-models';
  const specifier = group ? `${pkg}/${group}/${version}` : `${pkg}/${version}`;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(specifier)) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const cls = mod[kind] as ModelClass | undefined;
  if (typeof cls !== 'function' || cls.apiVersion !== apiVersion || cls.kind !== kind) return undefined;
  return cls;
}

/** Returns the schema errors of one object, or a message when its kind has no schema. */
async function schemaErrors(obj: K8sObject): Promise<string | null> {
  const id = `${obj.apiVersion} ${obj.kind} ${obj.metadata?.name ?? '<no name>'}`;
  if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') return `${id}: missing apiVersion/kind`;
  const Model = await modelFor(obj.apiVersion, obj.kind);
  if (!Model) return `${id}: no schema known for ${obj.apiVersion}/${obj.kind}`;
  try {
    new Model(obj).validate();
    return null;
  } catch (err) {
    return `${id}: ${(err as Error).message}`;
  }
}

/** Module holding the model of an apiVersion/kind, e.g. kubernetes-models/apps/v1/Deployment. */
function modelModule(apiVersion: string, kind: string): string {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  const pkg = group && CRD_PACKAGES[group] ? CRD_PACKAGES[group] : 'kubernetes-models';
  return group ? `${pkg}/${group}/${version}/${kind}` : `${pkg}/${version}/${kind}`;
}

/**
 * The JSON schemas of the Kubernetes OpenAPI spec allow unknown properties, so `.validate()` does
 * not catch a misspelt field (e.g. `readinesProbe`). The TypeScript interfaces that
 * kubernetes-models generates from the same spec do: every object is type-checked as an object
 * literal against its `I<Kind>` interface (excess property checks). Returns the diagnostics.
 */
function unknownFieldErrors(objects: K8sObject[]): string[] {
  const file = join(ROOT, 'test', '__k8s_strict_check__.ts');
  const lines: string[] = [];
  objects.forEach((o, i) => {
    lines.push(`import type { I${o.kind} as T${i} } from ${JSON.stringify(modelModule(o.apiVersion, o.kind))};`);
    lines.push(`// ${o.apiVersion} ${o.kind} ${o.metadata.name}`);
    lines.push(`export const o${i}: T${i} = ${JSON.stringify(o, null, 1)};`);
  });
  const source = lines.join('\n');
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const isVirtual = (f: string): boolean => resolve(f) === file;
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  const readFile = host.readFile.bind(host);
  host.getSourceFile = (f, lang, ...rest) => (isVirtual(f) ? ts.createSourceFile(f, source, lang) : getSourceFile(f, lang, ...rest));
  host.fileExists = (f) => isVirtual(f) || fileExists(f);
  host.readFile = (f) => (isVirtual(f) ? source : readFile(f));
  const program = ts.createProgram([file], options, host);
  const sf = program.getSourceFile(file);
  return ts.getPreEmitDiagnostics(program, sf).map((d) => {
    const where = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : undefined;
    // Name the object: the comment line above its declaration.
    const objLine = where ? source.split('\n').slice(0, where.line + 1).reverse().find((l) => l.startsWith('// ')) : undefined;
    return `${objLine?.slice(3) ?? '?'}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
  });
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------
function only<T extends K8sObject>(objects: K8sObject[], kind: string): T {
  const found = objects.filter((o) => o.kind === kind);
  assert.equal(found.length, 1, `expected exactly one ${kind}, found ${found.length}`);
  return found[0] as T;
}

function selects(selector: LabelSelector | undefined, labels: Record<string, string>): boolean {
  const ml = selector?.matchLabels ?? {};
  return Object.keys(ml).length > 0 && Object.entries(ml).every(([k, v]) => labels[k] === v);
}

function mainContainer(d: Deployment): Container {
  const c = d.spec.template.spec.containers.find((x) => x.name === 'latent-decoder');
  assert.ok(c, 'container "latent-decoder" missing');
  return c;
}

function allContainers(d: Deployment): Container[] {
  return [...(d.spec.template.spec.initContainers ?? []), ...d.spec.template.spec.containers];
}

function probeBudgetSeconds(p: Probe | undefined): number {
  return (p?.periodSeconds ?? 10) * (p?.failureThreshold ?? 3);
}

function configData(objects: K8sObject[]): { name: string; data: Record<string, string> } {
  const cms = objects.filter((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('latent-decoder-config'));
  assert.equal(cms.length, 1, 'expected one latent-decoder-config ConfigMap');
  const cm = cms[0] as K8sObject & { data: Record<string, string> };
  return { name: cm.metadata.name, data: cm.data };
}

function skipIfNoKubectl(t: { skip(msg: string): void }): boolean {
  if (kubectlMissing) {
    t.skip(kubectlMissing);
    return true;
  }
  return false;
}

type EgressPeer = { podSelector?: LabelSelector; namespaceSelector?: LabelSelector; ipBlock?: { cidr: string; except?: string[] } };
type EgressRule = { to?: EgressPeer[]; ports?: { port?: number | string; endPort?: number; protocol?: string }[] };

function inCidr(ip: string, cidr: string): boolean {
  const [net, bits] = cidr.split('/');
  if (!net || net.includes(':') || ip.includes(':')) return false;
  const num = (a: string): number => a.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(bits ?? 32));
  return Math.floor(num(ip) / size) === Math.floor(num(net) / size);
}

/** Whether egress rules let the pod reach an address outside the cluster's pods on port/protocol. */
function egressToIp(rules: EgressRule[], ip: string, port: number, protocol: string): boolean {
  return rules.some((r) => {
    const portOk = !r.ports?.length || r.ports.some((p) => (p.protocol ?? 'TCP') === protocol &&
      (p.port === undefined || (p.endPort !== undefined ? port >= Number(p.port) && port <= p.endPort : String(p.port) === String(port))));
    // no `to`: every destination; selector peers match pods, never an outside address
    const toOk = !r.to?.length || r.to.some((peer) => peer.ipBlock !== undefined && inCidr(ip, peer.ipBlock.cidr) && !(peer.ipBlock.except ?? []).some((e) => inCidr(ip, e)));
    return portOk && toOk;
  });
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------
test('schema validators are active (negative controls)', async () => {
  const Model = await modelFor('apps/v1', 'Deployment');
  assert.ok(Model);
  const bad = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: 'x' },
    spec: { selector: {}, template: { spec: { containers: [{ name: 'a', ports: [{ containerPort: 'http' }] }] } } },
  };
  assert.throws(() => new Model(bad).validate(), /containerPort/);
  const SM = await modelFor('monitoring.coreos.com/v1', 'ServiceMonitor');
  assert.ok(SM, 'ServiceMonitor schema must be available');
  assert.throws(() => new SM({ apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor', metadata: { name: 'x' }, spec: { selector: {}, endpoints: [{ port: 8080 }] } }).validate());
  assert.equal(await modelFor('example.com/v1', 'Widget'), undefined, 'unknown kinds must have no schema');
  // Misspelt field: accepted by the JSON schema, rejected by the TypeScript interface check.
  const typo = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: 'typo' },
    spec: { selector: {}, template: { spec: { containers: [{ name: 'a', readinesProbe: { httpGet: { path: '/readyz', port: 8080 } } }] } } },
  };
  assert.doesNotThrow(() => new Model(typo).validate());
  const errors = unknownFieldErrors([typo]);
  assert.equal(errors.length, 1, errors.join('\n'));
  assert.match(errors[0] ?? '', /readinesProbe/);
  // The egress evaluator sees an open rule and an ipBlock's exceptions.
  assert.equal(egressToIp([{}], '169.254.169.254', 443, 'TCP'), true);
  assert.equal(egressToIp([{ to: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['169.254.0.0/16'] } }], ports: [{ port: 443 }] }], '169.254.169.254', 443, 'TCP'), false);
  assert.equal(egressToIp([{ to: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['169.254.0.0/16'] } }], ports: [{ port: 443 }] }], '169.254.169.254'.replace('169.254', '52.1'), 443, 'TCP'), true);
});

for (const overlay of OVERLAYS) {
  test(`overlay ${overlay}: every rendered object passes schema validation`, async (t) => {
    if (skipIfNoKubectl(t)) return;
    const objects = render(overlay);
    const kinds = objects.map((o) => o.kind).sort();
    for (const kind of ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'NetworkPolicy', 'PodDisruptionBudget', 'Service', 'ServiceAccount', 'ServiceMonitor']) {
      assert.ok(kinds.includes(kind), `overlay ${overlay} renders no ${kind} (got ${kinds.join(', ')})`);
    }
    const errors = (await Promise.all(objects.map(schemaErrors))).filter((e): e is string => e !== null);
    assert.deepEqual(errors, [], `schema validation failed:\n${errors.join('\n')}`);
  });

  test(`overlay ${overlay}: no unknown or mistyped fields (kubernetes-models TypeScript interfaces)`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const errors = unknownFieldErrors(render(overlay));
    assert.deepEqual(errors, [], `unknown/mistyped fields:\n${errors.join('\n')}`);
  });

  test(`overlay ${overlay}: probes, lifecycle and graceful shutdown`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const objects = render(overlay);
    const d = only<Deployment>(objects, 'Deployment');
    const c = mainContainer(d);
    // the named port is the one the server listens on (PORT)
    const httpPort = c.ports?.find((p) => p.name === 'http');
    assert.equal(String(httpPort?.containerPort), c.env?.find((e) => e.name === 'PORT')?.value);

    for (const [probe, path] of [['startupProbe', '/readyz'], ['readinessProbe', '/readyz'], ['livenessProbe', '/healthz']] as const) {
      const p = c[probe];
      assert.ok(p?.httpGet, `${probe} must be an httpGet probe`);
      assert.equal(p.httpGet.path, path, `${probe} path`);
      assert.ok(p.httpGet.port === 'http' || p.httpGet.port === 8080, `${probe} port`);
    }
    // Model load + warm-up: at least 5 min (10 min on GPU) before the kubelet gives up.
    const minStartup = overlay === 'gpu' ? 600 : 300;
    assert.ok(probeBudgetSeconds(c.startupProbe) >= minStartup, `startupProbe budget ${probeBudgetSeconds(c.startupProbe)}s < ${minStartup}s`);
    if (overlay === 'gpu') {
      const cpuStartup = probeBudgetSeconds(mainContainer(only<Deployment>(render('cpu'), 'Deployment')).startupProbe);
      assert.ok(probeBudgetSeconds(c.startupProbe) > cpuStartup, 'gpu startupProbe must be longer than cpu');
    }

    // Exec-form node (no shell/npm wrapper) so SIGTERM reaches the server.
    assert.equal(c.command?.[0], 'node');
    assert.ok(!(c.args ?? []).some((a) => /\bnpm\b|\bsh\b/.test(a)));

    const preStop = c.lifecycle?.preStop;
    assert.ok(preStop, 'preStop hook missing');
    const preStopSeconds = preStop.sleep?.seconds ?? Number(preStop.exec?.command.join(' ').match(/sleep\s+(\d+)/)?.[1] ?? NaN);
    assert.ok(Number.isFinite(preStopSeconds) && preStopSeconds > 0, 'preStop must sleep');
    // The drain after SIGTERM is bounded by DRAIN_TIMEOUT_MS (REQUEST_TIMEOUT_MS bounds one
    // request, not the drain): the kubelet's SIGKILL must come after preStop + that bound.
    const grace = (drainTimeoutMs: string | undefined): string | undefined => {
      const drainSeconds = (drainTimeoutMs === undefined ? loadConfig({}).drainTimeoutMs : Number(drainTimeoutMs)) / 1000;
      const seconds = d.spec.template.spec.terminationGracePeriodSeconds ?? 30;
      return seconds > preStopSeconds + drainSeconds ? undefined
        : `terminationGracePeriodSeconds ${seconds} must exceed preStop ${preStopSeconds}s + DRAIN_TIMEOUT_MS ${drainSeconds}s`;
    };
    const { data } = configData(objects);
    assert.equal(grace(data.DRAIN_TIMEOUT_MS), undefined, grace(data.DRAIN_TIMEOUT_MS));
    assert.match(grace('3600000') ?? '', /must exceed preStop \d+s \+ DRAIN_TIMEOUT_MS 3600s/, 'a drain longer than the grace period is caught');

    // The HPA owns the replica count.
    assert.equal(d.spec.replicas, undefined, 'Deployment must not pin replicas (HPA-managed)');
  });

  test(`overlay ${overlay}: pod and container security`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const d = only<Deployment>(render(overlay), 'Deployment');
    const pod = d.spec.template.spec;
    assert.equal(pod.securityContext?.runAsNonRoot, true);
    assert.ok((pod.securityContext?.runAsUser ?? 0) > 0, 'a non-root UID');
    assert.equal(pod.securityContext?.seccompProfile?.type, 'RuntimeDefault');
    assert.equal(pod.automountServiceAccountToken, false);
    for (const c of allContainers(d)) {
      const sc = c.securityContext;
      assert.ok(sc, `${c.name}: securityContext missing`);
      assert.equal(sc.readOnlyRootFilesystem, true, `${c.name}: readOnlyRootFilesystem`);
      assert.equal(sc.allowPrivilegeEscalation, false, `${c.name}: allowPrivilegeEscalation`);
      assert.ok(sc.capabilities?.drop?.includes('ALL'), `${c.name}: capabilities.drop ALL`);
      assert.deepEqual(sc.capabilities?.add ?? [], [], `${c.name}: no added capabilities`);
      assert.notEqual(sc.privileged, true);
      if (sc.runAsUser !== undefined) assert.notEqual(sc.runAsUser, 0);
      // Writable scratch space on a read-only root filesystem.
      const tmp = c.volumeMounts?.find((m) => m.mountPath === '/tmp');
      assert.ok(tmp, `${c.name}: /tmp must be mounted`);
      assert.ok(pod.volumes?.find((v) => v.name === tmp.name)?.emptyDir, `${c.name}: /tmp must be an emptyDir`);
      assert.ok(c.resources?.requests?.memory && c.resources.limits?.memory, `${c.name}: memory requests/limits`);
    }
  });

  test(`overlay ${overlay}: models volume filled by the pull initContainer from the ConfigMap`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const objects = render(overlay);
    const d = only<Deployment>(objects, 'Deployment');
    const pod = d.spec.template.spec;
    const { name: cmName, data } = configData(objects);
    const main = mainContainer(d);

    const models = pod.volumes?.find((v) => v.name === 'models');
    assert.ok(models && (models.emptyDir || models.persistentVolumeClaim), 'models volume must be an emptyDir or PVC');
    assert.equal(main.volumeMounts?.find((m) => m.name === 'models')?.mountPath, '/models');

    const init = pod.initContainers?.find((c) => /pull/.test(c.name));
    assert.ok(init, 'model pull initContainer missing');
    assert.equal(init.image, main.image, 'initContainer must run the same image');
    assert.equal(init.volumeMounts?.find((m) => m.name === 'models')?.mountPath, '/models');
    assert.notEqual(init.volumeMounts?.find((m) => m.name === 'models')?.readOnly, true);
    // The Hugging Face cache goes to the models volume (sized for weights), not to /tmp, in a
    // dot folder that model discovery skips.
    const hubCache = init.env?.find((e) => e.name === 'HF_HUB_CACHE')?.value ?? '';
    assert.match(hubCache, /^\/models\/\.[^/]+$/);

    const initEnv = new Map((init.env ?? []).map((e) => [e.name, e]));
    for (const key of ['HF_REPO', 'MODEL_NAME', 'HF_FP16']) {
      const ref = initEnv.get(key)?.valueFrom?.configMapKeyRef;
      assert.ok(ref, `initContainer env ${key} must come from the ConfigMap`);
      assert.equal(ref.name, cmName, `${key}: ConfigMap reference must follow the generated name`);
      assert.ok(ref.key in data, `ConfigMap has no key ${ref.key}`);
    }
    const hfToken = initEnv.get('HF_TOKEN')?.valueFrom?.secretKeyRef;
    assert.ok(hfToken, 'HF_TOKEN must come from a Secret');
    assert.equal(hfToken.optional, true, 'HF_TOKEN Secret must be optional');

    // Service configuration: ConfigMap + optional AUTH_TOKEN Secret; HF_TOKEN stays in the initContainer.
    assert.ok(main.envFrom?.some((e) => e.configMapRef?.name === cmName), 'main container must load the ConfigMap');
    const auth = main.env?.find((e) => e.name === 'AUTH_TOKEN')?.valueFrom?.secretKeyRef;
    assert.ok(auth, 'AUTH_TOKEN must come from a Secret');
    assert.equal(auth.optional, true, 'AUTH_TOKEN Secret must be optional');
    assert.ok(!main.env?.some((e) => e.name === 'HF_TOKEN'), 'HF_TOKEN must not reach the server container');
    assert.equal(data.DEFAULT_MODEL, data.MODEL_NAME, 'DEFAULT_MODEL should be the pulled model');
  });

  test(`overlay ${overlay}: image, execution providers and resources`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const objects = render(overlay);
    const d = only<Deployment>(objects, 'Deployment');
    const pod = d.spec.template.spec;
    const { data } = configData(objects);
    for (const c of allContainers(d)) assert.equal(c.image, `latent-decoder:${overlay}`, `${c.name}: image`);
    const gpuLimited = allContainers(d).filter((c) => c.resources?.limits?.['nvidia.com/gpu'] !== undefined);
    const main = mainContainer(d);

    if (overlay === 'cpu') {
      assert.deepEqual(gpuLimited, [], 'cpu overlay must not request GPUs');
      assert.doesNotMatch(data.EXECUTION_PROVIDERS ?? '', /cuda|tensorrt/, 'the cpu image has no CUDA provider');
      // a CPU limit: ONNX Runtime and the libuv pool are sized from it
      assert.ok(main.resources?.limits?.cpu !== undefined, 'cpu overlay: CPU limit');
      // ONNX Runtime must not size its thread pool from the node's cores: the sessions' threads fit the limit
      const threads = Number(data.ORT_INTRA_OP_THREADS) * Number(data.MODEL_INSTANCES ?? 1);
      assert.ok(Number(data.ORT_INTRA_OP_THREADS) >= 1 && threads <= Number(main.resources?.limits?.cpu), `${threads} threads`);
      assert.ok(!pod.tolerations?.some((x) => x.key === 'nvidia.com/gpu'));
      assert.equal(pod.nodeSelector?.['nvidia.com/gpu.present'], undefined);
    } else {
      assert.deepEqual(gpuLimited.map((c) => c.name), ['latent-decoder'], 'only the server container gets the GPU');
      assert.ok(Number(main.resources?.limits?.['nvidia.com/gpu']) >= 1, 'the server requests a GPU');
      assert.equal(data.EXECUTION_PROVIDERS?.split(',')[0], 'cuda', 'CUDA first, CPU as the fallback');
      assert.ok(
        pod.tolerations?.some((x) => x.key === 'nvidia.com/gpu' && x.effect === 'NoSchedule' && (x.operator === 'Exists' || x.operator === undefined || x.operator === 'Equal')),
        'toleration for nvidia.com/gpu:NoSchedule missing',
      );
      assert.equal(pod.nodeSelector?.['nvidia.com/gpu.present'], 'true');
    }
  });

  test(`overlay ${overlay}: HPA scales the Deployment on the queue gauge`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const objects = render(overlay);
    const d = only<Deployment>(objects, 'Deployment');
    const hpa = only<K8sObject & { spec: Obj }>(objects, 'HorizontalPodAutoscaler');
    const spec = hpa.spec as {
      scaleTargetRef: { apiVersion: string; kind: string; name: string };
      minReplicas?: number;
      maxReplicas: number;
      metrics: { type: string; pods?: { metric: { name: string }; target: { type: string; averageValue?: string | number } } }[];
      behavior?: { scaleUp?: { stabilizationWindowSeconds?: number }; scaleDown?: { stabilizationWindowSeconds?: number } };
    };
    assert.deepEqual(spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: d.metadata.name });
    assert.equal(spec.metrics.length, 1);
    const m = spec.metrics[0];
    assert.equal(m?.type, 'Pods');
    assert.equal(m?.pods?.metric.name, QUEUE_GAUGE);
    assert.equal(m?.pods?.target.type, 'AverageValue');
    const target = Number(m?.pods?.target.averageValue);
    assert.ok(target > 0);
    // Target is a whole number of batches waiting per pod.
    const { data } = configData(objects);
    assert.equal(target % Number(data.MAX_BATCH_SIZE), 0, 'averageValue should be a multiple of MAX_BATCH_SIZE');
    assert.ok(target <= Number(data.MAX_QUEUE_SIZE), 'averageValue must be reachable before the queue rejects');
    assert.ok((spec.minReplicas ?? 1) >= 2, 'minReplicas >= 2 so that the PDB allows drains without outage');
    assert.ok(spec.maxReplicas > (spec.minReplicas ?? 1));
    assert.ok((spec.behavior?.scaleDown?.stabilizationWindowSeconds ?? 0) >= 60, 'scaleDown stabilization');
    assert.notEqual(spec.behavior?.scaleUp?.stabilizationWindowSeconds, undefined, 'scaleUp stabilization');
  });

  test(`overlay ${overlay}: Service, PDB, NetworkPolicy and ServiceMonitor select the decoder pods`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const objects = render(overlay);
    const d = only<Deployment>(objects, 'Deployment');
    const podLabels = d.spec.template.metadata.labels;
    assert.ok(selects(d.spec.selector, podLabels));

    const svc = only<K8sObject & { spec: { selector: Record<string, string>; ports: { name: string; port: number; targetPort: string | number }[] } }>(objects, 'Service');
    assert.ok(selects({ matchLabels: svc.spec.selector }, podLabels), 'Service selector');
    const svcPort = svc.spec.ports.find((p) => p.name === 'http');
    assert.ok(svcPort && (svcPort.targetPort === 'http' || svcPort.targetPort === 8080));

    const pdb = only<K8sObject & { spec: { selector: LabelSelector; maxUnavailable?: number | string; minAvailable?: number | string } }>(objects, 'PodDisruptionBudget');
    assert.ok(selects(pdb.spec.selector, podLabels), 'PDB selector');
    assert.ok(pdb.spec.maxUnavailable !== undefined || pdb.spec.minAvailable !== undefined);

    type Peer = { podSelector?: LabelSelector; namespaceSelector?: LabelSelector; ipBlock?: Obj };
    const np = only<K8sObject & { spec: { podSelector: LabelSelector; policyTypes: string[]; ingress: { from?: Peer[]; ports?: { port: number | string; protocol?: string }[] }[] } }>(objects, 'NetworkPolicy');
    assert.ok(selects(np.spec.podSelector, podLabels), 'NetworkPolicy podSelector');
    assert.ok(np.spec.policyTypes.includes('Ingress'));
    for (const rule of np.spec.ingress) {
      assert.ok(rule.from && rule.from.length > 0, 'every ingress rule must restrict sources');
      assert.deepEqual(rule.ports?.map((p) => String(p.port)), ['8080'], 'ingress only on port 8080');
      for (const peer of rule.from) assert.equal(peer.ipBlock, undefined, 'no ipBlock peers');
    }
    const peers = np.spec.ingress.flatMap((r) => r.from ?? []);
    assert.ok(
      peers.some((p) => !p.namespaceSelector && p.podSelector?.matchLabels?.['app.kubernetes.io/name'] === 'denoiser'),
      'ingress from the denoiser pods',
    );
    assert.ok(
      peers.some((p) => p.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name'] === 'monitoring'),
      'ingress from the monitoring namespace (metrics scraping)',
    );

    const sm = only<K8sObject & { spec: { selector: LabelSelector; endpoints: { port?: string; path?: string; interval?: string }[] } }>(objects, 'ServiceMonitor');
    assert.ok(selects(sm.spec.selector, svc.metadata.labels ?? {}), 'ServiceMonitor must select the Service');
    assert.equal(sm.spec.endpoints[0]?.port, svcPort.name);
    assert.equal(sm.spec.endpoints[0]?.path, '/metrics');
  });
  test(`overlay ${overlay}: NetworkPolicy egress allows DNS and HTTPS to public addresses, never the metadata address`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const np = only<K8sObject & { spec: { policyTypes: string[]; egress?: EgressRule[] } }>(render(overlay), 'NetworkPolicy');
    assert.ok(np.spec.policyTypes.includes('Egress'), 'egress is restricted');
    const rules = np.spec.egress ?? [];

    const dnsPorts = rules
      .filter((r) => r.to?.some((p) => p.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name'] === 'kube-system' && p.podSelector?.matchLabels?.['k8s-app'] === 'kube-dns'))
      .flatMap((r) => (r.ports ?? []).map((p) => `${p.protocol ?? 'TCP'}/${p.port}`));
    assert.deepEqual(dnsPorts.sort(), ['TCP/53', 'UDP/53'], 'DNS to kube-dns over UDP and TCP');

    for (const ip of ['3.165.102.1', '18.244.28.1', '52.84.150.1', '8.8.8.8']) {
      assert.ok(egressToIp(rules, ip, 443, 'TCP'), `HTTPS to the public address ${ip} (the Hub and its CDN)`);
      assert.ok(!egressToIp(rules, ip, 80, 'TCP'), `no plain HTTP to ${ip}`);
    }
    for (const ip of ['169.254.169.254', '169.254.170.2', '10.0.0.1', '172.20.0.10', '192.168.1.1', '100.100.100.200']) {
      for (const port of [443, 80, 53]) {
        for (const protocol of ['TCP', 'UDP']) assert.ok(!egressToIp(rules, ip, port, protocol), `no egress to ${ip} ${protocol}/${port}`);
      }
    }
    const ports = new Set(rules.flatMap((r) => (r.ports ?? [{ port: 'any' }]).map((p) => `${p.protocol ?? 'TCP'}/${p.port}`)));
    assert.deepEqual([...ports].sort(), ['TCP/443', 'TCP/53', 'UDP/53'], 'no other port is open');
  });

  test(`overlay ${overlay}: the server preloads the thread-pool sizing, fed its own CPU limit`, (t) => {
    if (skipIfNoKubectl(t)) return;
    const main = mainContainer(only<Deployment>(render(overlay), 'Deployment'));
    const command = main.command ?? [];
    // node --require <preload> <entry>: both are build outputs of files in src/
    const preload = command[command.indexOf('--require') + 1] ?? '';
    assert.ok(command.includes('--require'), `the command preloads the pool sizing: ${command.join(' ')}`);
    assert.ok(existsSync(join(ROOT, preload.replace(/^(\.\/)?dist\//, 'src/').replace(/\.cjs$/, '.cts'))), `${preload} is built from src/`);
    assert.ok(existsSync(join(ROOT, (command.at(-1) ?? '').replace(/^dist\//, 'src/').replace(/\.js$/, '.ts'))), `${command.at(-1)} is built from src/`);
    const cpu = main.env?.find((e) => e.name === 'CPU_LIMIT')?.valueFrom?.resourceFieldRef;
    assert.equal(cpu?.resource, 'limits.cpu');
    assert.equal(cpu.containerName, main.name, "the server's own limit");
    // whole CPUs: the preload reads an integer (a divisor of 1m would give 4000 threads)
    assert.equal(String(cpu.divisor), '1');
    assert.ok(!main.env?.some((e) => e.name === 'UV_THREADPOOL_SIZE'), 'a fixed UV_THREADPOOL_SIZE would override the sizing');
  });
}

for (const overlay of OVERLAYS) {
  test(`overlay ${overlay}: ONNX Runtime telemetry is off in every container`, (t) => {
    if (skipIfNoKubectl(t)) return;
    for (const c of allContainers(only<Deployment>(render(overlay), 'Deployment'))) {
      assert.equal(c.env?.find((e) => e.name === 'ORT_DISABLE_TELEMETRY')?.value, '1', `${c.name}: ORT_DISABLE_TELEMETRY`);
    }
  });
}

test('pull initContainer script passes the ConfigMap settings to `node dist/cli.js pull`', (t) => {
  if (skipIfNoKubectl(t)) return;
  const sh = spawnSync('sh', ['-c', 'exit 0']);
  if (sh.error) {
    t.skip(`no POSIX sh to run the script: ${sh.error.message}`);
    return;
  }
  const d = only<Deployment>(render('cpu'), 'Deployment');
  const init = d.spec.template.spec.initContainers?.find((c) => /pull/.test(c.name));
  assert.ok(init?.command && init.args);
  assert.deepEqual(init.command, ['/bin/sh', '-c']);
  const { data } = configData(render('cpu'));

  const dir = mkdtempSync(join(tmpdir(), 'ld-init-'));
  try {
    const modelsDir = join(dir, 'models');
    mkdirSync(join(dir, 'dist'));
    mkdirSync(modelsDir);
    const argvFile = join(dir, 'argv.json');
    // Stub CLI: records its arguments and leaves a download cache behind where HF_HUB_CACHE says.
    writeFileSync(
      join(dir, 'dist', 'cli.js'),
      `require('node:fs').writeFileSync(${JSON.stringify(argvFile)}, JSON.stringify(process.argv.slice(2)));` +
        `require('node:fs').mkdirSync(require('node:path').join(process.env.HF_HUB_CACHE, 'models--x--y', 'blobs'), { recursive: true });`,
    );
    const hubCache = (init.env?.find((e) => e.name === 'HF_HUB_CACHE')?.value ?? '').replaceAll('/models', modelsDir);
    writeFileSync(join(dir, 'package.json'), '{"type":"commonjs"}');
    const script = (init.args[0] ?? '').replaceAll('/models', modelsDir);
    const run = (env: Record<string, string | undefined>): { status: number | null; argv: string[] | null; out: string } => {
      rmSync(argvFile, { force: true });
      const clean = Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined));
      const res = spawnSync('sh', ['-c', script], { cwd: dir, encoding: 'utf8', env: { PATH: process.env.PATH ?? '', ...clean } });
      const argv = existsSync(argvFile) ? (JSON.parse(readFileSync(argvFile, 'utf8')) as string[]) : null;
      return { status: res.status, argv, out: res.stdout + res.stderr };
    };
    const base = { HF_REPO: data.HF_REPO, MODEL_NAME: data.MODEL_NAME, HF_FP16: data.HF_FP16, HF_SUBFOLDER: data.HF_SUBFOLDER, HF_REVISION: data.HF_REVISION, HF_HUB_CACHE: hubCache };

    // Defaults from the ConfigMap.
    let r = run(base);
    assert.equal(r.status, 0, r.out);
    assert.deepEqual(r.argv, ['pull', data.HF_REPO, '--name', data.MODEL_NAME, '--models-dir', modelsDir, `--subfolder=${data.HF_SUBFOLDER ?? ''}`, '--revision', data.HF_REVISION]);
    assert.equal(existsSync(hubCache), false, 'download cache removed after conversion');

    // fp16 on, subfolder/revision keys absent (CLI defaults).
    r = run({ ...base, HF_FP16: 'true', HF_SUBFOLDER: undefined, HF_REVISION: undefined });
    assert.deepEqual(r.argv, ['pull', data.HF_REPO, '--name', data.MODEL_NAME, '--models-dir', modelsDir, '--fp16']);

    // Empty HF_REPO: preview model, no pull.
    r = run({ ...base, HF_REPO: '' });
    assert.equal(r.status, 0, r.out);
    assert.equal(r.argv, null);

    // Model already on the volume (PVC): no pull.
    mkdirSync(join(modelsDir, base.MODEL_NAME ?? 'x'));
    writeFileSync(join(modelsDir, base.MODEL_NAME ?? 'x', 'model.onnx'), '');
    writeFileSync(join(modelsDir, base.MODEL_NAME ?? 'x', 'config.json'), '{}');
    r = run(base);
    assert.equal(r.status, 0, r.out);
    assert.equal(r.argv, null);

    // A failing pull fails the initContainer.
    rmSync(join(modelsDir, base.MODEL_NAME ?? 'x'), { recursive: true });
    writeFileSync(join(dir, 'dist', 'cli.js'), 'process.exit(1)');
    r = run(base);
    assert.notEqual(r.status, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('prometheus-adapter rule maps the queue gauge to the pods custom metric the HPA uses', async (t) => {
  const file = join(ROOT, 'deploy', 'prometheus-adapter', 'rules.yaml');
  const objects = parseDocs(readFileSync(file, 'utf8'), file);
  assert.equal(objects.length, 1);
  const cm = objects[0] as K8sObject & { data: Record<string, string> };
  assert.equal(cm.kind, 'ConfigMap');
  assert.deepEqual([await schemaErrors(cm)], [null]);

  interface AdapterRule {
    seriesQuery: string;
    resources: { overrides: Record<string, { resource: string }> };
    name: { matches: string; as?: string };
    metricsQuery: string;
  }
  const checkRules = (rules: AdapterRule[] | undefined, where: string): void => {
    const rule = rules?.find((r) => r.seriesQuery.includes(QUEUE_GAUGE));
    assert.ok(rule, `${where}: no rule for ${QUEUE_GAUGE}`);
    assert.equal(rule.resources.overrides.pod?.resource, 'pod', `${where}: pod label must map to the pod resource`);
    assert.equal(rule.resources.overrides.namespace?.resource, 'namespace');
    const exposed = rule.name.as ?? QUEUE_GAUGE.replace(new RegExp(rule.name.matches), '');
    assert.ok(new RegExp(rule.name.matches).test(QUEUE_GAUGE));
    assert.equal(exposed, QUEUE_GAUGE, `${where}: exposed metric name must equal the HPA metric`);
    assert.match(rule.metricsQuery, /<<\.Series>>\{<<\.LabelMatchers>>\}/);
    assert.match(rule.metricsQuery, /by \(<<\.GroupBy>>\)/);
  };
  const config = parseYaml(cm.data['config.yaml'] ?? '') as { rules?: AdapterRule[] };
  checkRules(config.rules, 'rules.yaml');
  const values = parseYaml(readFileSync(join(ROOT, 'deploy', 'prometheus-adapter', 'values.yaml'), 'utf8')) as { rules?: { custom?: AdapterRule[] } };
  checkRules(values.rules?.custom, 'values.yaml');

  if (skipIfNoKubectl(t)) return;
  for (const overlay of OVERLAYS) {
    const hpa = only<K8sObject & { spec: { metrics: { pods?: { metric: { name: string } } }[] } }>(render(overlay), 'HorizontalPodAutoscaler');
    assert.equal(hpa.spec.metrics[0]?.pods?.metric.name, QUEUE_GAUGE);
  }
});

test('compose example: stop_grace_period outlasts the drain; locked down like the Deployment; the server mounts the models read-only', () => {
  interface Service { command?: string[]; environment?: Record<string, string>; volumes?: string[]; read_only?: boolean; tmpfs?: string[]; cap_drop?: string[]; stop_grace_period?: string; user?: string }
  const compose = parseYaml(readFileSync(join(ROOT, 'deploy', 'compose.yaml'), 'utf8')) as { services: Record<string, Service> };
  const server = compose.services['latent-decoder'];
  const pull = compose.services['pull-model'];
  assert.ok(server && pull);
  const seconds = (d: string): number => {
    const m = /^(?:(\d+)m)?(?:(\d+)s)?$/.exec(d);
    assert.ok(m && d !== '', `stop_grace_period ${d}`);
    return Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0);
  };
  const drainMs = Number(server.environment?.DRAIN_TIMEOUT_MS ?? 30000);
  assert.ok(seconds(server.stop_grace_period ?? '10s') > drainMs / 1000, `stop_grace_period ${server.stop_grace_period} must exceed DRAIN_TIMEOUT_MS ${drainMs} ms`);
  for (const s of [server, pull]) {
    assert.equal(s.read_only, true);
    assert.deepEqual(s.tmpfs, ['/tmp']);
    assert.deepEqual(s.cap_drop, ['ALL']);
    assert.equal(s.user, undefined, "the image's uid 10001");
  }
  assert.ok(server.volumes?.includes('models:/models:ro'));
  assert.ok(pull.volumes?.includes('models:/models'));
  assert.match(pull.command?.join(' ') ?? '', /latent-decoder pull /);
});
