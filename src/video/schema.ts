// The OpenAPI pieces of POST /decode that only video models use: their options and JSON answers.
// src/schemas.ts merges them into the decode route's schema.

const encoded = (types: string[]): object => ({
  type: 'object',
  required: ['contentType', 'data'],
  properties: {
    contentType: { type: 'string', enum: types },
    data: { type: 'string', contentEncoding: 'base64', description: 'The encoded file, base64' },
  },
});

const framesBody = {
  type: 'object',
  required: ['fps', 'frames'],
  properties: {
    fps: { type: 'number' },
    frames: { type: 'array', items: encoded(['image/png', 'image/jpeg']), description: 'One video\'s frames in order (format=png or jpeg)' },
  },
};

/** JSON answers of a video model: one video's frames, or several videos (containers or frame lists). */
export const videoJsonBodies = [
  framesBody,
  {
    type: 'object',
    required: ['videos'],
    properties: {
      videos: {
        type: 'array',
        description: 'N > 1 videos: each one file (mp4, webm, webp, gif) or its frames (png, jpeg)',
        items: {
          type: 'object',
          properties: {
            contentType: { type: 'string', enum: ['video/mp4', 'video/webm', 'image/webp', 'image/gif'] },
            data: { type: 'string', contentEncoding: 'base64' },
            fps: { type: 'number' },
            frames: framesBody.properties.frames,
          },
        },
      },
    },
  },
] as const;

/** Query options only a video model reads (besides a 5-D shape and the video formats). */
export const videoOptions = {
  fps: { type: 'number', exclusiveMinimum: 0, maximum: 120, default: 16, description: 'Video models: frames per second of mp4, webm, webp and gif answers (Wan: 16)' },
  stream: {
    type: 'boolean', default: false,
    description: 'Video models, N = 1: send frames as they are decoded, as a fragmented MP4 (format=mp4), WebM, or multipart/mixed PNG/JPEG frames; a failure after the first byte resets the connection',
  },
} as const;

/** Answer content types only video models send. */
export const videoContent = {
  'video/mp4': { schema: { type: 'string', format: 'binary' } },
  'video/webm': { schema: { type: 'string', format: 'binary' } },
  'image/gif': { schema: { type: 'string', format: 'binary' } },
  'multipart/mixed': { schema: { type: 'string', format: 'binary', description: 'stream=true with png/jpeg: one part per frame (Content-Type, Content-Length, X-Frame-Index)' } },
} as const;
