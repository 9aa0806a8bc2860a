// Route schemas: the source of the OpenAPI document (openapi/openapi.json, /docs). The response
// schemas also serialize the JSON answers (fast-json-stringify writes only the properties listed
// here: a new field must be added here too). /decode documents its query and bodies but does not
// validate them: latents/ parses them itself, to answer with the service's own error codes.
import type { FastifySchema, FastifySchemaCompiler } from 'fastify';
import { videoContent, videoJsonBodies, videoOptions } from './video/schema.js';
import { ErrorCodes, type ErrorCode } from './errors.js';
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

/** Error answers for the given statuses, each naming the codes it carries. */
function errors(...statuses: number[]): Record<number, object> {
  const out: Record<number, object> = {};
  for (const status of statuses) {
    const codes = (Object.keys(ErrorCodes) as ErrorCode[]).filter((c) => ErrorCodes[c] === status);
    out[status] = {
      ...json(`Error: ${codes.join(', ')}`, { $ref: 'Error#' }),
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
    'and the fields of a JSON body other than latents must be flat and under 64 KiB.',
    'A request the service will refuse (unknown model, bad shape or byte count, full queue, draining) is answered from its query string and headers before its body is read, and the connection is closed.',
  ].join(' '),
  tags: ['decode'],
  querystring: { type: 'object', properties: options },
  headers: {
    type: 'object',
    properties: {
      'x-request-timeout-ms': { type: 'number', exclusiveMinimum: 0, description: 'Shortens the request deadline (never beyond REQUEST_TIMEOUT_MS); 504 when it passes. Decimal milliseconds only' },
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
        'server-timing': { type: 'string', description: 'parse, queue, infer and encode durations (images only)' },
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
    ...errors(400, 401, 404, 413, 415, 429, 500, 501, 503, 504),
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
            required: ['name', 'default', 'family', 'kind', 'channels', 'instances', 'precision', 'scalingFactor', 'shiftFactor', 'provider', 'ready', 'builtin', 'source'],
            properties: {
              name: { type: 'string' },
              default: { type: 'boolean' },
              family: { type: ['string', 'null'], description: 'Model family (sd1, sdxl, sd3, flux, taesd, ...), when the model names one' },
              kind: { type: 'string', enum: ['image', 'video'], description: 'video: a streaming video decoder (Wan 2.1 VAE) taking [N, C, T, h, w]' },
              channels: { type: 'integer', description: 'Latent channels' },
              latentsMean: { type: 'array', items: { type: 'number' }, description: 'Video models: the per-channel de-normalisation, latents · latentsStd + latentsMean' },
              latentsStd: { type: 'array', items: { type: 'number' } },
              instances: { type: 'integer', description: 'ONNX Runtime sessions serving it (MODEL_INSTANCES)' },
              precision: { type: 'string', description: 'fp32, fp16, ...' },
              scalingFactor: { type: 'number' },
              shiftFactor: { type: 'number' },
              provider: { type: 'string', description: 'ONNX Runtime execution provider in use' },
              ready: { type: 'boolean' },
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
