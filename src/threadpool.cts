// Preloaded with `node --require ./dist/threadpool.cjs dist/server.js`: sizes libuv's thread pool,
// on which sharp encodes images, before anything can start it. libuv reads UV_THREADPOOL_SIZE
// once, when the pool first starts; by the time the first line of an ES module runs, the ESM
// loader has already started it with the default 4 threads (measured: scripts/threadpool-probe.ts, test/threadpool.test.ts),
// so an `import` that sets the variable has no effect. A CommonJS `--require` runs before the
// loader. 4 threads would cap encoding at 4 images at a time however many cores there are.
//
// An explicit UV_THREADPOOL_SIZE wins. Otherwise: the container's CPU count, from CPU_LIMIT
// (the Deployment sets it from the Downward API, limits.cpu, because os.availableParallelism()
// sees the node's cores, not a CFS quota), else os.availableParallelism(); never below libuv's 4,
// which also serves file and DNS work.
import os = require('node:os');
import './inference/telemetry.cjs'; // ONNX Runtime telemetry off from the first line (see that file)

const MAX = 1024; // libuv's own upper bound

if (!process.env.UV_THREADPOOL_SIZE) {
  const limit = Number(process.env.CPU_LIMIT);
  const cpus = Number.isInteger(limit) && limit > 0 ? limit : os.availableParallelism();
  process.env.UV_THREADPOOL_SIZE = String(Math.min(MAX, Math.max(4, cpus)));
}
