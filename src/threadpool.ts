// Imported first by main.ts: libuv reads UV_THREADPOOL_SIZE when its pool first starts, and sharp
// encodes on that pool. Its default of 4 threads would cap image encoding at 4 at a time however
// many cores there are; one thread per core lets encoding keep up with a fast GPU.
import os from 'node:os';

if (!process.env.UV_THREADPOOL_SIZE) {
  process.env.UV_THREADPOOL_SIZE = String(Math.max(4, os.availableParallelism()));
}
