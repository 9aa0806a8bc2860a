// The JSON body scanner: the latents string is found and decoded without JSON.parse of the whole
// body; everything else is small, flat and parsed; nothing else gets through.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ServiceError } from '../src/errors.js';
import { MAX_JSON_FIELDS_BYTES, scanJsonBody } from '../src/latents/json-body.js';

const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 37 + 11) & 0xff));
const code = (c: string, m: RegExp) => (e: unknown): boolean => e instanceof ServiceError && e.code === c && m.test(e.message);

test('json body: the latents decode exactly, the other fields parse, in any order', async () => {
  const data = bytes(3 * 1024 * 1024 + 5); // several base64 slices, with padding
  const b64 = data.toString('base64');
  const body = Buffer.from(` { "shape" : [1, 4, 8, 8],"latents":"${b64}" , "dtype": "float32", "note": "a \\"quoted\\" }" }\n`);
  const json = scanJsonBody(body);
  assert.deepEqual(json.fields, { shape: [1, 4, 8, 8], dtype: 'float32', note: 'a "quoted" }' });
  assert.equal(json.byteLength, data.length);
  assert.ok(Buffer.from(await json.latents()).equals(data));
  // URL-safe base64 without padding decodes too.
  const url = data.subarray(0, 100).toString('base64url');
  assert.ok(Buffer.from(await scanJsonBody(Buffer.from(`{"latents": "${url}"}`)).latents()).equals(data.subarray(0, 100)));
  // JSON escapes in the latents (some encoders write \/) take the plain way.
  const escaped = data.subarray(0, 300).toString('base64').replaceAll('/', '\\/');
  assert.ok(Buffer.from(await scanJsonBody(Buffer.from(`{"latents": "${escaped}"}`)).latents()).equals(data.subarray(0, 300)));
});

test('json body: a character outside base64 deep inside a long string is found by the decode', async () => {
  const b64 = bytes(600_000).toString('base64');
  const broken = `${b64.slice(0, 400_000)}!${b64.slice(400_001)}`;
  const json = scanJsonBody(Buffer.from(`{"latents": "${broken}"}`));
  assert.equal(json.byteLength, 600_000, 'the length alone promises the full count');
  await assert.rejects(json.latents(), code('BAD_BASE64', /outside the base64 alphabet/));
});

test('json body: huge or nested structures are refused after at most 64 KiB of scanning', () => {
  // 3 M keys would take seconds in JSON.parse; the scanner stops at the budget.
  const keys = Buffer.from(`{${Array.from({ length: 300_000 }, (_, i) => `"k${i}":${i}`).join(',')}, "latents": "AAAA"}`);
  assert.throws(() => scanJsonBody(keys), code('BAD_JSON', new RegExp(`more than ${MAX_JSON_FIELDS_BYTES} bytes`)));
  const array = Buffer.from(`[${'1,'.repeat(1_000_000)}1]`);
  assert.throws(() => scanJsonBody(array), code('BAD_JSON', /not an array/));
  assert.throws(() => scanJsonBody(Buffer.from('{"latents": "AAAA", "x": {"a": {"b": [[[[[[[1]]]]]]]}}}')), code('BAD_JSON', /nests deeper/));
  assert.throws(() => scanJsonBody(Buffer.from('{"latents": "AAAA"} {}')), code('BAD_JSON', /after the object/));
  assert.throws(() => scanJsonBody(Buffer.from('{"latents": "AAAA", "shape": [1, 2,]}')), code('BAD_JSON', /not valid JSON/));
  assert.throws(() => scanJsonBody(Buffer.from('{"latents": "AAAA", "latents": "BBBB"}')), code('BAD_PARAMETER', /"latents" twice/));
  assert.throws(() => scanJsonBody(Buffer.from('{"latents": "AAAA"')), code('BAD_JSON', /not valid JSON/));
  assert.throws(() => scanJsonBody(Buffer.from('{"latents": "AAAAA"}')), code('BAD_BASE64', /5 characters/));
  assert.throws(() => scanJsonBody(Buffer.from('{"latents": ""}')), code('EMPTY_BODY', /empty/));
});
