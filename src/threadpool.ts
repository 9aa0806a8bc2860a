// Superseded by threadpool.cts, preloaded with `node --require ./dist/threadpool.cjs`: setting
// UV_THREADPOOL_SIZE from an ES module is too late (the ESM loader has already started libuv's
// pool with 4 threads). This module is empty and stays only while server.ts still imports it.
export {};
