// The JSON body without JSON.parse on the whole of it: JSON.parse of a 50 MB document blocks the
// event loop for seconds, and a body of millions of keys or array items costs that before any
// check can refuse it. A small tokenizer walks the top-level object, jumps over the "latents"
// string with indexOf (native, no string made), and hands JSON.parse only the rest, which must be
// small. The latents are base64-decoded from the body bytes in slices, between event-loop turns.
import { ServiceError } from '../errors.js';

/** The fields other than latents: a few options, never megabytes. */
export const MAX_JSON_FIELDS_BYTES = 64 * 1024;
const MAX_DEPTH = 8;
const MAX_KEY_BYTES = 256;
/** Base64 characters decoded per event-loop turn (a multiple of 4: slices decode independently). */
const B64_SLICE = 1024 * 1024;

/** Characters of each end of the latents checked up front. */
const SNIFF = 64 * 1024;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const EQUALS = 0x3d;

export interface JsonBody {
  /** The parsed fields other than latents. */
  fields: Record<string, unknown>;
  /** Decoded byte count of the latents, known from the base64 length alone. */
  byteLength: number;
  /** Decodes the latents; BAD_BASE64 when a character is not base64. */
  latents: () => Promise<Uint8Array>;
}

const notJson = (why: string): ServiceError => new ServiceError('BAD_JSON', `the body is not valid JSON: ${why}`);

function skipWs(b: Buffer, i: number): number {
  while (i < b.length) {
    const c = b[i]!;
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
    i++;
  }
  return i;
}

/** The index of the quote that closes the string whose contents start at `from`. */
function stringEnd(b: Buffer, from: number): number {
  for (;;) {
    const q = b.indexOf(QUOTE, from);
    if (q < 0) throw notJson(`a string starting at byte ${from - 1} never ends`);
    let k = q - 1;
    while (k >= from && b[k] === BACKSLASH) k--;
    if ((q - 1 - k) % 2 === 0) return q; // an even run of backslashes escapes only itself
    from = q + 1;
  }
}

/** The end of the value at `i` (the `,` or `}` after it), scanning no further than `limit`. */
function valueEnd(b: Buffer, i: number, limit: number): number {
  let depth = 0;
  while (i < limit) {
    const c = b[i]!;
    if (c === QUOTE) i = stringEnd(b, i + 1) + 1;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > MAX_DEPTH) throw new ServiceError('BAD_JSON', `the JSON body nests deeper than ${MAX_DEPTH} levels at byte ${i}: options are flat values`);
      i++;
    } else if (c === 0x5d || c === 0x7d) {
      if (depth === 0) return i;
      depth--;
      i++;
    } else if (c === 0x2c && depth === 0) return i;
    else i++;
  }
  if (limit < b.length) throw tooBig();
  throw notJson('unexpected end of the body');
}

const tooBig = (): ServiceError => new ServiceError('BAD_JSON',
  `the JSON body's fields other than "latents" take more than ${MAX_JSON_FIELDS_BYTES} bytes: send the tensor as the base64 "latents" string and only small options beside it`);

/** Each body's scan: /decode asks for a JSON body's model, then its shape, then its latents. */
const scans = new WeakMap<Buffer, JsonBody>();

/**
 * Splits the body into the latents string (not parsed) and the other fields (parsed), once per
 * body buffer (the result depends on the bytes only; `latents()` decodes afresh on each call).
 * @throws ServiceError BAD_JSON, BAD_BASE64, BAD_PARAMETER, EMPTY_BODY naming the problem
 */
export function scanJsonBody(b: Buffer): JsonBody {
  let scanned = scans.get(b);
  if (!scanned) scans.set(b, (scanned = scan(b)));
  return scanned;
}

function scan(b: Buffer): JsonBody {
  let i = skipWs(b, 0);
  if (b[i] !== 0x7b) {
    throw new ServiceError('BAD_JSON', `the JSON body must be an object like {"latents": "<base64>", "shape": [1, 4, 64, 64]}, not ${b[i] === 0x5b ? 'an array' : 'this'} (byte ${i})`);
  }
  i++;
  const keys = new Set<string>();
  let lat: { start: number; end: number } | undefined;
  const latLength = (): number => (lat ? lat.end - lat.start : 0);
  i = skipWs(b, i);
  if (b[i] === 0x7d) i++;
  else {
    for (;;) {
      i = skipWs(b, i);
      if (b[i] !== QUOTE) throw notJson(i >= b.length ? 'unexpected end of the body' : `expected a field name at byte ${i}`);
      const keyEnd = stringEnd(b, i + 1);
      if (keyEnd - i > MAX_KEY_BYTES) throw new ServiceError('BAD_JSON', `the JSON body has a field name of ${keyEnd - i - 1} bytes at byte ${i}: option names are short`);
      let key: string;
      try {
        key = JSON.parse(b.toString('utf8', i, keyEnd + 1)) as string;
      } catch (e) {
        throw notJson(`the field name at byte ${i}: ${(e as Error).message}`);
      }
      if (keys.has(key)) throw new ServiceError('BAD_PARAMETER', `the JSON body gives ${JSON.stringify(key)} twice; give each field once`);
      keys.add(key);
      i = skipWs(b, keyEnd + 1);
      if (b[i] !== 0x3a) throw notJson(`expected ":" after ${JSON.stringify(key)} at byte ${i}`);
      i = skipWs(b, i + 1);
      if (i >= b.length) throw notJson('unexpected end of the body');
      if (key === 'latents') {
        if (b[i] !== QUOTE) throw new ServiceError('BAD_JSON', 'the JSON body needs "latents": a base64 string of the raw little-endian tensor bytes, not another JSON value');
        const end = stringEnd(b, i + 1);
        lat = { start: i + 1, end };
        i = end + 1;
      } else {
        i = valueEnd(b, i, Math.min(b.length, MAX_JSON_FIELDS_BYTES + latLength() + 1));
      }
      if (i - latLength() > MAX_JSON_FIELDS_BYTES) throw tooBig();
      i = skipWs(b, i);
      if (b[i] === 0x2c) {
        i++;
        continue;
      }
      if (b[i] === 0x7d) {
        i++;
        break;
      }
      throw notJson(i >= b.length ? 'unexpected end of the body' : `expected "," or "}" at byte ${i}`);
    }
  }
  if (skipWs(b, i) !== b.length) throw notJson(`unexpected data after the object at byte ${i}`);
  if (b.length - latLength() > MAX_JSON_FIELDS_BYTES) throw tooBig();
  if (!lat) throw new ServiceError('BAD_JSON', 'the JSON body needs "latents": a base64 string of the raw little-endian tensor bytes');

  // The rest, with the latents cut down to "": small by now, and JSON.parse checks its syntax.
  const rest = Buffer.concat([b.subarray(0, lat.start), b.subarray(lat.end)]).toString('utf8');
  let fields: Record<string, unknown>;
  try {
    fields = JSON.parse(rest) as Record<string, unknown>;
  } catch (e) {
    throw notJson((e as Error).message);
  }
  delete fields.latents;
  const { start, end } = lat;
  if (b.subarray(start, end).includes(BACKSLASH)) return escapedLatents(b, start, end, fields);
  // Text that is not base64 at all says so before its length is compared with the shape; the
  // decode checks every character later.
  const head = b.toString('latin1', start, Math.min(end, start + SNIFF));
  const tail = b.toString('latin1', Math.max(start, end - SNIFF), end);
  if (!BASE64.test(head) || !BASE64.test(tail)) throw new ServiceError('BAD_BASE64', '"latents" is not valid base64');
  return { fields, byteLength: base64Bytes(b, start, end), latents: () => decodeBase64(b, start, end) };
}

/** Decoded length from the length and padding alone; BAD_BASE64 for a length no base64 has. */
function base64Bytes(b: Buffer, start: number, end: number): number {
  if (end === start) throw new ServiceError('EMPTY_BODY', '"latents" is empty');
  let pad = 0;
  while (pad < 2 && end - pad > start && b[end - pad - 1] === EQUALS) pad++;
  const n = end - start;
  const core = n - pad;
  if ((pad > 0 && n % 4 !== 0) || core % 4 === 1) {
    throw new ServiceError('BAD_BASE64', `"latents" is not valid base64: ${n} characters cannot be a base64 string`);
  }
  return Math.floor((core * 3) / 4);
}

/**
 * Node's decoder skips characters outside the alphabet (both the standard and the URL-safe one
 * are read) instead of failing, so a body with any such character decodes to fewer bytes than its
 * length promises: comparing the counts checks every character without a loop over them here.
 */
async function decodeBase64(b: Buffer, start: number, end: number): Promise<Uint8Array> {
  const want = base64Bytes(b, start, end);
  // allocUnsafeSlow: a buffer of its own, so the float views on it are aligned.
  const out = Buffer.allocUnsafeSlow(want);
  let written = 0;
  for (let s = start; s < end; s += B64_SLICE) {
    if (s > start) await new Promise((r) => setImmediate(r));
    const e = Math.min(end, s + B64_SLICE);
    written += out.write(b.toString('latin1', s, e), written, 'base64');
    if (e < end && written !== ((e - start) / 4) * 3) break; // a character was skipped
  }
  if (written !== want) throw new ServiceError('BAD_BASE64', '"latents" is not valid base64: it holds characters outside the base64 alphabet');
  return out;
}

const BASE64 = /^[A-Za-z0-9+/\-_]*={0,2}$/;

/** A latents string with JSON escapes (a `\/` or a `\n` between lines): rare, so the plain way. */
function escapedLatents(b: Buffer, start: number, end: number, fields: Record<string, unknown>): JsonBody {
  const s = (JSON.parse(b.toString('latin1', start - 1, end + 1)) as string).replace(/\s+/g, '');
  if (s.length === 0) throw new ServiceError('EMPTY_BODY', '"latents" is empty');
  if (!BASE64.test(s) || s.length % 4 === 1) throw new ServiceError('BAD_BASE64', '"latents" is not valid base64');
  const bytes = Buffer.from(s, 'base64');
  const copy = new Uint8Array(bytes.byteLength); // aligned for the float views
  copy.set(bytes);
  return { fields, byteLength: copy.byteLength, latents: () => Promise.resolve(copy) };
}
