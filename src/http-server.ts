// The Node HTTP server the app runs on. Fastify applies none of its server options (keepAliveTimeout,
// requestTimeout, ...) to a server that serverFactory builds, so they are set here, together with
// what only the server sees: `Expect: 100-continue` (answered only once the request's headers have
// passed the checks) and the answers Node's HTTP parser gives by itself (400, 408, 431), in the
// service's JSON error format.
import { createServer, STATUS_CODES, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { ErrorCodes, type ErrorCode } from './errors.js';

export interface HttpServerOptions {
  /** How long an idle keep-alive connection stays open (ms); above the load balancer's idle timeout. */
  keepAliveTimeoutMs: number;
  /** Time to receive a whole request, headers and body (ms): Node answers 408 and closes past it. */
  requestTimeoutMs: number;
}

/** Requests whose client waits for `100 Continue` before it sends the body, with their response. */
const awaiting = new WeakMap<IncomingMessage, ServerResponse>();
/** The response in progress on each connection: Node's own answers never interleave with it. */
const active = new WeakMap<Duplex, ServerResponse>();
/** Connections Node's parser refused (and closed) while a request on them was in the app's hands. */
const refused = new WeakMap<Duplex, NodeRefusal>();

/** What Node's HTTP parser refused, as the service's error. */
export interface NodeRefusal {
  code: ErrorCode;
  message: string;
}

/**
 * The server: keep-alive of `keepAliveTimeoutMs` (its `Keep-Alive: timeout=` header is that in
 * seconds), Node's whole-request deadline `requestTimeoutMs` (checked every second, not every
 * 30 s), and `headersTimeout` equal to it. Node (≥ 18) counts headersTimeout only while a
 * request's headers arrive, never on an idle keep-alive connection, and refuses a value above
 * requestTimeout; the old advice "headersTimeout above keepAliveTimeout" was for Node < 18, whose
 * header timer ran across idle periods.
 */
export function createHttpServer(handler: RequestListener, opts: HttpServerOptions): Server {
  const track: RequestListener = (req, res) => {
    active.set(req.socket, res);
    res.once('close', () => {
      if (active.get(req.socket) === res) active.delete(req.socket);
    });
    handler(req, res);
  };
  const server = createServer({
    requestTimeout: opts.requestTimeoutMs,
    headersTimeout: opts.requestTimeoutMs,
    connectionsCheckingInterval: 1000,
  }, track);
  server.keepAliveTimeout = opts.keepAliveTimeoutMs;
  // With a listener, Node does not answer 100 Continue by itself: continueUpload does, once the
  // app has checked the headers.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    awaiting.set(req, res);
    track(req, res);
  });
  return server;
}

/**
 * Sends `100 Continue` to a client that waits for it (`Expect: 100-continue`), once: call it when
 * the body is about to be read, after every check on the headers passed. Nothing otherwise.
 */
export function continueUpload(req: IncomingMessage): void {
  const res = awaiting.get(req);
  if (!res) return;
  awaiting.delete(req);
  if (!res.headersSent && !res.writableEnded) res.writeContinue();
}

/** The client still waits for `100 Continue`: its body was never sent, so an answer closes the connection. */
export const awaitsContinue = (req: IncomingMessage): boolean => awaiting.has(req);

/**
 * Why Node closed this connection under a request the app was handling (e.g. 408 at
 * requestTimeoutMs, 400 for a malformed chunked body): that request ended so, not by a client abort.
 */
export const refusalOn = (socket: Duplex | null | undefined): NodeRefusal | undefined => (socket ? refused.get(socket) : undefined);

/** What Node's HTTP parser refused, as the service's error: a stable code and a message. */
export function clientErrorOf(err: Error & { code?: string; reason?: string }, requestTimeoutMs: number): NodeRefusal {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { code: 'REQUEST_TIMEOUT', message: `the request was not received within ${requestTimeoutMs} ms (BODY_TIMEOUT_MS)` };
    case 'HPE_HEADER_OVERFLOW':
      return { code: 'REQUEST_HEADER_FIELDS_TOO_LARGE', message: 'the request\'s headers are over Node\'s limit (16 KiB by default)' };
    default:
      return { code: 'BAD_REQUEST', message: `the request is not valid HTTP/1.1: ${err.reason ?? err.message} (${err.code ?? 'parse error'})` };
  }
}

/**
 * The server's `clientError` listener: answers in the service's JSON format and closes the
 * connection. `counted` is called when no request on the connection had reached the app (so the
 * app's own hooks do not count it). A connection the client reset or closed mid-request gets
 * nothing: there is nobody to answer.
 */
export function answerClientError(err: Error & { code?: string; reason?: string }, socket: Duplex, requestTimeoutMs: number, counted: (status: number) => void): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  // The client closed its side mid-request: gone, not refused (the app's request, if any, ends as an abort).
  if (err.code === 'HPE_INVALID_EOF_STATE') {
    socket.destroy();
    return;
  }
  const refusal = clientErrorOf(err, requestTimeoutMs);
  const { code, message } = refusal;
  const status = ErrorCodes[code];
  const res = active.get(socket);
  if (res) refused.set(socket, refusal);
  else counted(status);
  if (socket.writable && !res?.headersSent) {
    const body = JSON.stringify({ error: { code, message } });
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
}
