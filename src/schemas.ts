// Route schemas: the source of the OpenAPI document (openapi/openapi.json, /docs). The response
// schemas also serialize the JSON answers (fast-json-stringify writes only the properties listed
// here: a new field must be added here too). /decode documents its query and bodies but does not
// validate them: latents/ parses them itself, to answer with the service's own error codes.
import type { FastifySchema, FastifySchemaCompiler } from 'fastify';
import { videoContent, videoJsonBodies, videoOptions } from './video/schema.js';
import { ErrorCodes, type ErrorCode } from './errors.js';
import { MAX_LATENT_MAGNITUDE } from './latents/fuse.js';
import { WIRE_DTYPES } from './tensor/dtype.js';

/** For routes whose schema only documents: accepts everything and changes nothing (no coercion). */
export const documentOnly: FastifySchemaCompiler<unknown> = () => () => true;

export const errorSchema = {
  $id: 'Error',
  description: 'The body of every error answer',
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string', enum: Object.keys(ErrorCodes), description: 'Stable machine-readable code' },
        message: { type: 'string', description: 'What went wrong, naming the value at fault (generic for 5xx other than inference failures)' },
        requestId: { type: 'string', description: '5xx only: the request id (X-Request-Id) to quote when reporting it' },
      },
    },
  },
} as const;

/** A route open without a bearer token even when AUTH_TOKEN is set (see auth.ts). */
const PUBLIC = { security: [] };

const json = (description: string, schema: object): object => ({ description, content: { 'application/json': { schema } } });
const binary = { type: 'string', format: 'binary' } as const;

const RETRY_AFTER = { 'retry-after': { type: 'integer', description: 'Seconds to wait before retrying' } };

/** Every status in the error table, ascending: what /decode may answer, generated so none is left out. */
const ALL_ERROR_STATUSES = [...new Set(Object.values(ErrorCodes))].sort((a, b) => a - b);

/** Error answers for the given statuses, each naming the codes it carries. */
function errors(...statuses: number[]): Record<number, object> {
  const out: Record<number, object> = {};
  for (const status of statuses) {
    const codes = (Object.keys(ErrorCodes) as ErrorCode[]).filter((c) => ErrorCodes[c] === status);
    // 499 is nginx's convention for the logs and metrics: the client is gone and never sees it.
    const note = status === 499 ? ' (logged and counted only: the client closed the connection first)' : '';
    out[status] = {
      ...json(`Error: ${codes.join(', ')}${note}`, { $ref: 'Error#' }),
      ...(status === 429 ? { headers: RETRY_AFTER } : {}),
    };
  }
  return out;
}

const options = {
  model: { type: 'string', description: 'A served model name (GET /v1/models); default: the default model' },
  shape: {
    type: 'array', items: { type: 'integer', minimum: 1 }, minItems: 3, maxItems: 5,
    description: '[N, C, h, w] ([N, h, w, C] with layout=nhwc) or [C, h, w]; [N, C, T, h, w] for a video model (Wan); with height and width, a 3-D shape is FLUX-packed latents [N, (H/16)·(W/16), 4C]. Repeated key (shape=1&shape=4&...) or "1,4,64,64"; decimal integers only. Optional for raw bytes: inferred from the model when the size is unambiguous',
  },
  layout: {
    type: 'string', enum: ['nchw', 'nhwc'], default: 'nchw',
    description: 'Memory order of the latents: nchw (channels first, PyTorch) or nhwc (channels last, Keras/JAX); shape is given in the same order. Not for packed latents',
  },
  dtype: { type: 'string', enum: [...WIRE_DTYPES], default: 'float32', description: 'Element type of the latents on the wire ("torch." prefix accepted)' },
  format: { type: 'string', enum: ['png', 'jpeg', 'jpg', 'webp', 'mp4', 'webm', 'gif'], description: 'Image format; default: from the Accept header, else png. Video models also take mp4, webm (ffmpeg) and gif; a video (more than one frame) defaults to animated webp, and png/jpeg give its frames as JSON' },
  image_format: { type: 'string', enum: ['png', 'jpeg', 'jpg', 'webp', 'mp4', 'webm', 'gif'], description: 'Same as format (the diffusers remote_decode name)' },
  quality: { type: 'integer', minimum: 1, maximum: 100, description: 'JPEG/WebP quality' },
  scaling_factor: { type: 'number', not: { const: 0 }, description: 'VAE scaling factor; default: the model\'s' },
  shift_factor: { type: 'number', description: 'VAE shift factor; default: the model\'s' },
  do_scaling: { type: 'boolean', default: true, description: 'Apply latents / scaling_factor + shift_factor before decoding' },
  output_type: {
    type: 'string', enum: ['pil', 'image', 'pt', 'tensor', 'mp4'], default: 'pil',
    description: 'pil/image: encoded images; pt/tensor: the raw tensor (application/octet-stream)',
  },
  partial_postprocess: { type: 'boolean', default: false, description: 'With output_type=pt: uint8 NHWC pixels instead of the float32 NCHW decoder output' },
  height: { type: 'integer', minimum: 1, description: 'Image height in pixels: with width and a 3-D shape, the latents are FLUX-packed and unpacked as diffusers\' _unpack_latents does ((H/16)·(W/16) patches of 2x2, C = last dimension / 4)' },
  width: { type: 'integer', minimum: 1, description: 'Image width in pixels, for packed latents (see height)' },
  tile_size: {
    type: 'integer', minimum: 0,
    description: 'Tiled decoding: latents larger than this on either side are decoded as overlapping tiles of this side and cross-faded as diffusers\' AutoencoderKL.tiled_decode does; 0 never tiles (then a side over MAX_UNTILED_LATENT_SIDE is LATENT_TOO_LARGE); default TILE_LATENT_SIDE (128), at most MAX_UNTILED_LATENT_SIDE',
  },
  tile_overlap: { type: 'number', minimum: 0, exclusiveMaximum: 1, description: 'Tiled decoding: diffusers\' tile_overlap_factor; tiles start every int(tile_size·(1−tile_overlap)) latents; default TILE_OVERLAP (0.25)' },
  ...videoOptions,
} as const;

const imagesBody = {
  type: 'object',
  required: ['images'],
  properties: {
    images: {
      type: 'array',
      items: {
        type: 'object',
        required: ['contentType', 'data'],
        properties: {
          contentType: { type: 'string', enum: ['image/png', 'image/jpeg', 'image/webp'] },
          data: { type: 'string', contentEncoding: 'base64', description: 'The encoded image, base64' },
        },
      },
    },
  },
} as const;

export const decodeSchema: FastifySchema = {
  summary: 'Decode latents to images',
  description: [
    'Decodes Stable Diffusion latents with the model\'s VAE decoder. Requests are batched dynamically with others of the same latent size.',
    'The latents come as raw little-endian bytes (application/octet-stream, tensor/binary, binary/octet-stream or no Content-Type; the options in the query string),',
    'a NumPy .npy file (application/x-npy, application/npy, application/x-numpy; shape and dtype from its header) or JSON (base64 latents, the options as fields).',
    'One image answers with its bytes (image/png, image/jpeg or image/webp); several with JSON {images}; output_type=pt with the tensor bytes and `shape` and `dtype` headers.',
    'Without format, the first image type in the Accept header chooses.',
    'Parsing is strict: numbers are decimal (no 1e0 or 0x10 where an integer goes), each option is given once (a repeated key, a JSON array where a value goes,',
    'format and image_format disagreeing, or, with a JSON body, an option in the query string are a 400), an .npy body ends right after its data,',
    'and the fields of a JSON body other than latents must be flat and under 64 KiB; height and width beside a 4-D shape must be what it decodes to (8 pixels per latent).',
    `Values are checked in the same pass that scales them: NaN or ±Inf is NON_FINITE, a decoder-space value (latents / scaling_factor + shift_factor) beyond ±${MAX_LATENT_MAGNITUDE} is LATENT_OUT_OF_RANGE.`,
    'A request the service will refuse (unknown model, bad shape or byte count, full queue, draining) is answered from its query string and headers before its body is read, and the connection is closed.',
  ].join(' '),
  tags: ['decode'],
  querystring: { type: 'object', properties: options },
  headers: {
    type: 'object',
    properties: {
      'x-request-timeout-ms': { type: 'number', exclusiveMinimum: 0, description: 'Shortens the request deadline (never beyond REQUEST_TIMEOUT_MS), counted from the request\'s arrival, upload included; 504 when it passes. Decimal milliseconds only' },
      'content-encoding': { type: 'string', enum: ['identity', 'gzip', 'x-gzip', 'deflate'], description: 'The body\'s compression: inflated as it arrives, BODY_LIMIT_BYTES applying to the inflated bytes; any other coding is 415 UNSUPPORTED_CONTENT_ENCODING' },
      'x-request-id': { type: 'string', description: 'Echoed in the answer; generated when absent' },
    },
  },
  body: {
    content: {
      'application/octet-stream': { schema: { ...binary, description: 'Raw little-endian latents; shape and dtype in the query string' } },
      'tensor/binary': { schema: { ...binary, description: 'Same as application/octet-stream' } },
      'application/x-npy': { schema: { ...binary, description: 'A NumPy .npy file (float32 or float16); query options other than shape and dtype apply' } },
      'application/json': {
        schema: {
          type: 'object',
          required: ['latents'],
          properties: { latents: { type: 'string', contentEncoding: 'base64', description: 'The raw little-endian latent bytes, base64' }, ...options },
        },
      },
    },
  },
  response: {
    200: {
      description: 'The decoded image(s), or the tensor with output_type=pt',
      headers: {
        'server-timing': { type: 'string', description: 'parse, queue, infer, encode and total durations in ms (images and tensors)' },
        shape: { type: 'string', description: 'Tensor output only: JSON array, [N, 3, H, W] (float32) or [N, H, W, 3] (uint8, partial_postprocess)' },
        dtype: { type: 'string', enum: ['float32', 'uint8'], description: 'Tensor output only' },
      },
      content: {
        'image/png': { schema: binary },
        'image/jpeg': { schema: binary },
        'image/webp': { schema: binary },
        'application/json': { schema: { anyOf: [imagesBody, ...videoJsonBodies] } },
        ...videoContent,
        'application/octet-stream': { schema: { ...binary, description: 'The tensor, little-endian' } },
      },
    },
    ...errors(...ALL_ERROR_STATUSES),
  },
};

const encodeOptions = {
  model: { type: 'string', description: 'A served model that encodes (GET /v1/models, directions); default: the default model if it encodes, else the first that does' },
  shape: { ...options.shape, maxItems: 4, description: 'A tensor body\'s shape, [N, 3, H, W] or [3, H, W] (values in [-1, 1]); without it a raw body must be an image' },
  dtype: { ...options.dtype, description: 'A tensor body\'s element type' },
  output_dtype: { type: 'string', enum: [...WIRE_DTYPES], default: 'float32', description: 'The answer\'s element type' },
  sample_mode: {
    type: 'string', enum: ['mode', 'argmax', 'sample'], default: 'mode',
    description: 'mode (alias argmax): the posterior mean, deterministic; sample: mean + std·ε (KL encoders; TAESD is deterministic), ε from a seeded generator of our own (it cannot reproduce torch\'s)',
  },
  seed: { type: 'integer', minimum: 0, maximum: 4294967295, description: 'sample_mode=sample: the noise\'s seed; default: a fresh one' },
  scaling_factor: { type: 'number', not: { const: 0 }, description: 'The answer is (z − shift_factor) × scaling_factor; default: the model\'s (FLUX.2: its per-channel statistics)' },
  shift_factor: { type: 'number', description: 'See scaling_factor; default: the model\'s' },
  do_scaling: { type: 'boolean', default: true, description: 'false: the latents as the VAE makes them (decoder space)' },
  layout: { ...options.layout, description: 'The answer\'s order: nchw [N, C, h, w] or nhwc [N, h, w, C]' },
  pack: { type: 'boolean', default: false, description: 'FLUX-packed answer [N, (H/16)·(W/16), 4C] with height and width headers (sides must be multiples of 16)' },
  resize: { type: 'boolean', default: true, description: 'An image whose sides are not multiples of 8 (16 packed or FLUX.2) is resized down to the nearest multiple with Lanczos-3 (sharp; diffusers uses PIL\'s Lanczos: a level or so apart); false: 400' },
  tile_size: {
    type: 'integer', minimum: 0,
    description: 'Tiled encoding, in latents (a tile is 8× in pixels): images larger than 8·tile_size px on either side are encoded as diffusers\' AutoencoderKL.tiled_encode does (tiles encoded alone, moments cross-faded in latent space); 0 never tiles; default TILE_LATENT_SIDE (128), at most MAX_UNTILED_LATENT_SIDE',
  },
  tile_overlap: { type: 'number', minimum: 0, exclusiveMaximum: 1, description: 'Tiled encoding: diffusers\' tile_overlap_factor; pixel tiles start every int(8·tile_size·(1−tile_overlap)) px, which must be a whole number of latents; default TILE_OVERLAP (0.25)' },
} as const;

export const encodeSchema: FastifySchema = {
  summary: 'Encode images to latents',
  description: [
    'Encodes an image with the model\'s VAE encoder (a model folder\'s encoder.onnx), as diffusers\' vae.encode and VaeImageProcessor.preprocess do.',
    'The body is an image (PNG, JPEG or WebP, told by its bytes: no Content-Type needed; an animated image\'s first frame) or a tensor [N, 3, H, W] in [-1, 1]:',
    'raw bytes with shape and dtype in the query string, a .npy file, or JSON with the base64 "latents" field as on /decode.',
    'Images become RGB (alpha dropped, grayscale expanded, 16-bit reduced, CMYK converted) and x / 127.5 − 1. Requests batch with others of the same model and image size.',
    'The answer is the latents as raw bytes with `shape` and `dtype` headers (what diffusers\' remote_encode reads), or .npy (Accept: application/x-npy), or JSON (Accept: application/json).',
  ].join(' '),
  tags: ['encode'],
  querystring: { type: 'object', properties: encodeOptions },
  headers: decodeSchema.headers,
  body: {
    content: {
      'image/png': { schema: { ...binary, description: 'A PNG image (also without Content-Type)' } },
      'image/jpeg': { schema: binary },
      'image/webp': { schema: binary },
      'application/octet-stream': { schema: { ...binary, description: 'An image, or a raw little-endian tensor with shape and dtype in the query string' } },
      'application/x-npy': { schema: { ...binary, description: 'A NumPy .npy tensor [N, 3, H, W] (float32 or float16)' } },
      'application/json': {
        schema: {
          type: 'object', required: ['latents', 'shape'],
          properties: { latents: { type: 'string', contentEncoding: 'base64', description: 'The raw little-endian image tensor, base64 (the same field as on /decode)' }, ...encodeOptions },
        },
      },
    },
  },
  response: {
    200: {
      description: 'The latents',
      headers: {
        shape: { type: 'string', description: 'JSON array: [N, C, h, w], [N, h, w, C] (layout=nhwc) or [N, seq, 4C] (pack=true); FLUX.2: C is 4 × 32 patchified channels' },
        dtype: { type: 'string', enum: [...WIRE_DTYPES] },
        height: { type: 'integer', description: 'pack=true: the image height in pixels' },
        width: { type: 'integer', description: 'pack=true: the image width in pixels' },
        'server-timing': { type: 'string', description: 'parse, queue, infer and encode (the answer\'s bytes) durations' },
      },
      content: {
        'application/octet-stream': { schema: { ...binary, description: 'The latents, little-endian, C order' } },
        'application/x-npy': { schema: binary },
        'application/json': {
          schema: {
            type: 'object', required: ['latents', 'shape', 'dtype'],
            properties: {
              latents: { type: 'string', contentEncoding: 'base64' },
              shape: { type: 'array', items: { type: 'integer' } },
              dtype: { type: 'string', enum: [...WIRE_DTYPES] },
              height: { type: 'integer' },
              width: { type: 'integer' },
            },
          },
        },
      },
    },
    ...errors(...ALL_ERROR_STATUSES),
  },
};

const literal = (value: string): object => ({ type: 'string', enum: [value] });

export const healthzSchema: FastifySchema = {
  summary: 'Liveness',
  tags: ['health'],
  ...PUBLIC,
  response: { 200: json('The process is up', { type: 'object', required: ['status'], properties: { status: literal('ok') } }) },
};

export const readyzSchema: FastifySchema = {
  summary: 'Readiness',
  description: '200 once every model has loaded and run its warm-up; 503 while loading and while draining',
  tags: ['health'],
  ...PUBLIC,
  response: {
    200: json('Ready to decode', {
      type: 'object',
      required: ['status', 'models', 'defaultModel'],
      properties: { status: literal('ready'), models: { type: 'array', items: { type: 'string' } }, defaultModel: { type: 'string' } },
    }),
    ...errors(503),
  },
};

export const modelsSchema: FastifySchema = {
  summary: 'Served models',
  tags: ['models'],
  response: {
    200: json('The models, once loaded (an empty list before)', {
      type: 'object',
      required: ['defaultModel', 'models'],
      properties: {
        defaultModel: { type: ['string', 'null'] },
        models: {
          type: 'array',
          items: {
            type: 'object',
            required: ['name', 'default', 'directions', 'family', 'kind', 'channels', 'instances', 'precision', 'scalingFactor', 'shiftFactor', 'provider', 'ready', 'builtin', 'source'],
            properties: {
              name: { type: 'string' },
              directions: { type: 'array', items: { type: 'string', enum: ['decode', 'encode'] }, description: 'What it serves: decode (POST /decode), encode (POST /encode)' },
              default: { type: 'boolean' },
              family: { type: ['string', 'null'], description: 'Model family (sd1, sdxl, sd3, flux, taesd, ...), when the model names one' },
              kind: { type: ['string', 'null'], enum: ['image', 'video', null], description: 'video: a streaming video decoder (Wan 2.1 VAE) taking [N, C, T, h, w]; null for a model that did not load' },
              channels: { type: ['integer', 'null'], description: 'Latent channels (null for a model that did not load)' },
              latentsMean: { type: 'array', items: { type: 'number' }, description: 'Video models: the per-channel de-normalisation, latents · latentsStd + latentsMean' },
              latentsStd: { type: 'array', items: { type: 'number' } },
              instances: { type: 'integer', description: 'ONNX Runtime sessions serving it (MODEL_INSTANCES)' },
              precision: { type: 'string', description: 'fp32, fp16, ...' },
              scalingFactor: { type: ['number', 'null'] },
              shiftFactor: { type: ['number', 'null'] },
              provider: { type: ['string', 'null'], description: 'ONNX Runtime execution provider in use' },
              ready: { type: 'boolean', description: 'loaded, warmed up, every worker running, not draining: the rule /readyz applies to all models' },
              error: { type: 'string', description: 'Why the model cannot serve (a weight holding NaN or ±Inf, named); its requests get 503 MODEL_UNAVAILABLE' },
              builtin: { type: 'boolean' },
              source: { type: ['string', 'null'], description: 'Where the model came from' },
            },
          },
        },
      },
    }),
    ...errors(401),
  },
};

export const metricsSchema: FastifySchema = {
  summary: 'Prometheus metrics',
  description: 'Prometheus text exposition format; the metrics are listed in the README',
  tags: ['health'],
  ...PUBLIC,
  response: { 200: { description: 'The metrics', content: { 'text/plain': { schema: { type: 'string' } } } } },
};
