// Alignment is not the client's concern: the same latents decode identically whatever byte offset
// their data lands at — a raw body is a Buffer that may sit anywhere in Node's pool, a .npy header
// may have any length (numpy pads to 64 by convention only, older writers to 16), and JSON base64
// decodes into a buffer of its own. The parse layer is exercised at every offset 0–63 for each
// path and dtype; through HTTP (a real decode each, so fewer) at every .npy data offset modulo 8,
// which covers every alignment a typed array can need.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { toDecoderSpace } from '../src/latents/fuse.js';
import { scanJsonBody } from '../src/latents/json-body.js';
import { planLatents, readBody, type ModelLimits } from '../src/latents/parse.js';
import { toFloat16Bits, type WireDtype } from '../src/tensor/dtype.js';
import { bytesOf, loadFixture, sampleLatents, startService } from './helpers/service.js';

const MODEL: ModelLimits = { name: 'm', channels: 4, scalingFactor: 0.18215, shiftFactor: 0, maxLatentSide: 256 };
const SHAPE = [1, 4, 16, 16];

/** `data` copied into a buffer of its own at byte `offset`; the view of it that starts there. */
function at(offset: number, data: Uint8Array): Buffer {
  const b = Buffer.allocUnsafeSlow(offset + data.byteLength);
  b.set(data, offset);
  return b.subarray(offset);
}

function wireBytes(values: Float32Array, dtype: WireDtype): Buffer {
  if (dtype === 'float32') return Buffer.from(bytesOf(values));
  const bits = dtype === 'float16' ? toFloat16Bits(values) : Uint16Array.from(new Uint32Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength)), (w) => w >>> 16);
  return Buffer.from(bits.buffer, bits.byteOffset, bits.byteLength);
}

/**
 * A .npy file of format `version` whose data starts at byte `dataStart` (the header padded with
 * spaces, ending in '\n', as numpy writes and reads it).
 */
function npyWithDataAt(version: 1 | 2 | 3, dataStart: number, descr: string, shape: number[], data: Uint8Array): Buffer {
  const lenBytes = version === 1 ? 2 : 4;
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}), }`;
  const headerLen = dataStart - 8 - lenBytes;
  assert.ok(headerLen >= dict.length + 1, `data cannot start at ${dataStart}`);
  const pre = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0, 0, 0, 0, 0].slice(0, 8 + lenBytes));
  if (version === 1) pre.writeUInt16LE(headerLen, 8);
  else pre.writeUInt32LE(headerLen, 8);
  return Buffer.concat([pre, Buffer.from(dict.padEnd(headerLen - 1) + '\n', 'latin1'), data]);
}

async function parseAndFuse(kind: 'raw' | 'npy' | 'json', body: Buffer, query: Record<string, unknown>): Promise<Float32Array> {
  const wire = readBody(kind, body, query);
  return (await toDecoderSpace(planLatents(wire, MODEL), await wire.bytes())).data;
}

const DTYPES: WireDtype[] = ['float32', 'float16', 'bfloat16'];

test('alignment: raw bytes at every offset 0–63 decode to the same tensor, each dtype and layout', async () => {
  const values = sampleLatents(await loadFixture(), 0);
  for (const dtype of DTYPES) {
    for (const layout of ['nchw', 'nhwc']) {
      const shape = layout === 'nchw' ? SHAPE : [1, 16, 16, 4];
      const query = { shape: shape.join(','), dtype, layout };
      const data = wireBytes(values, dtype);
      const want = await parseAndFuse('raw', at(0, data), query);
      for (let k = 1; k < 64; k++) {
        const got = await parseAndFuse('raw', at(k, data), query);
        assert.deepEqual(got, want, `${dtype} ${layout} at offset ${k}`);
      }
    }
  }
});

test('alignment: .npy v1, v2 and v3 with the data at every offset modulo 64 decode to the same tensor', async () => {
  const values = sampleLatents(await loadFixture(), 0);
  for (const [descr, dtype] of [['<f4', 'float32'], ['<f2', 'float16']] as const) {
    const data = wireBytes(values, dtype);
    const want = await parseAndFuse('raw', at(0, data), { shape: SHAPE.join(','), dtype });
    for (const version of [1, 2, 3] as const) {
      for (let start = 128; start < 192; start++) {
        const file = at(start % 8, npyWithDataAt(version, start, descr, SHAPE, data));
        const got = await parseAndFuse('npy', file, {});
        assert.deepEqual(got, want, `${descr} v${version}, data at byte ${start}`);
      }
    }
  }
});

test('alignment: JSON base64 latents decode the same wherever the body and its string start', async () => {
  const values = sampleLatents(await loadFixture(), 0);
  for (const dtype of DTYPES) {
    const data = wireBytes(values, dtype);
    const want = await parseAndFuse('raw', at(0, data), { shape: SHAPE.join(','), dtype });
    const b64 = data.toString('base64');
    for (let k = 0; k < 64; k++) {
      const plain = Buffer.from(`${' '.repeat(k)}{"shape": [1, 4, 16, 16], "dtype": "${dtype}", "latents": "${b64}"}`);
      assert.deepEqual(await parseAndFuse('json', at(k % 8, plain), {}), want, `${dtype}, latents string at byte ${plain.indexOf(b64)}`);
      // The decoded bytes handed on as a view at offset k, as any other decoder might.
      const json = scanJsonBody(at(k, plain));
      const wire = { options: readBody('json', plain, {}).options, byteLength: json.byteLength, bytes: async () => at(k, await json.latents()) };
      assert.deepEqual((await toDecoderSpace(planLatents(wire, MODEL), await wire.bytes())).data, want, `${dtype}, decoded bytes at offset ${k}`);
    }
    const escaped = Buffer.from(`{"shape": [1, 4, 16, 16], "dtype": "${dtype}", "latents": "${b64.replace(/\//g, '\\/')}"}`);
    assert.deepEqual(await parseAndFuse('json', at(3, escaped), {}), want, `${dtype}, JSON-escaped base64`);
  }
});

test('alignment: over HTTP, a .npy whose data starts at any offset (e.g. a header ending at byte 117) answers the same tensor', async (t) => {
  const { app } = await startService(t);
  const values = sampleLatents(await loadFixture(), 0);
  const data = wireBytes(values, 'float32');
  const decode = (payload: Buffer, type: string, url = '/decode?output_type=pt') =>
    app.inject({ method: 'POST', url, payload, headers: { 'content-type': type } });
  const want = await decode(Buffer.from(data), 'application/octet-stream', `/decode?output_type=pt&shape=${SHAPE.join(',')}`);
  assert.equal(want.statusCode, 200, want.body);
  const starts = [117, ...Array.from({ length: 8 }, (_, k) => 128 + k)];
  for (const start of starts) {
    const res = await decode(npyWithDataAt(1, start, '<f4', SHAPE, data), 'application/x-npy');
    assert.equal(res.statusCode, 200, `data at byte ${start}: ${res.body}`);
    assert.ok(res.rawPayload.equals(want.rawPayload), `data at byte ${start}: the same tensor`);
  }
  for (const version of [2, 3] as const) {
    for (const start of [117, 130]) {
      const res = await decode(npyWithDataAt(version, start, '<f4', SHAPE, data), 'application/x-npy');
      assert.equal(res.statusCode, 200, `v${version}, data at byte ${start}: ${res.body}`);
      assert.ok(res.rawPayload.equals(want.rawPayload), `v${version}, data at byte ${start}: the same tensor`);
    }
  }
  const f16 = await decode(npyWithDataAt(1, 117, '<f2', SHAPE, wireBytes(values, 'float16')), 'application/x-npy');
  assert.equal(f16.statusCode, 200, f16.body);
  for (const k of [0, 1]) {
    const body = Buffer.from(`${' '.repeat(k)}{"shape": [1, 4, 16, 16], "output_type": "pt", "latents": "${data.toString('base64')}"}`);
    const res = await decode(body, 'application/json', '/decode');
    assert.equal(res.statusCode, 200, res.body);
    assert.ok(res.rawPayload.equals(want.rawPayload), `JSON padded by ${k}: the same tensor`);
  }
});
