/**
 * The connection to a Hutch server: fetch for requests and streams, WebSocket for terminals.
 * Only web-standard globals are used (fetch, ReadableStream, WebSocket, TextEncoder), so the
 * same code runs in Node 18+, Bun, Deno, a Cloudflare Worker or a browser behind a backend.
 */

import {
  APIError,
  ConfigurationError,
  HutchConnectionError,
  errorFromBody,
} from "./errors.js";

/** The constructor of a web-standard WebSocket (the global one, or e.g. the `ws` package's). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;

export interface ConnectionOptions {
  /** The server's URL; default `$HUTCH_URL`, then `http://127.0.0.1:7070`. */
  baseUrl?: string;
  /** The API key; default `$HUTCH_API_KEY`. */
  apiKey?: string;
  /** A fetch to use instead of the global one (a Worker's service binding, a test's). */
  fetch?: typeof fetch;
  /** A WebSocket class for terminals where there is no global one (Node 18-21: `ws`). */
  WebSocket?: WebSocketConstructor;
  /** An existing client (the other options must then be left out). */
  client?: HutchClient;
}

export type Query = Record<string, string | number | boolean | null | undefined> | [string, string][];

/** A request body: what fetch takes (typed loosely: TS 5.9's BodyInit wants ArrayBuffer-backed
 * arrays, and a Uint8Array's buffer type is generic). */
export type Body = BodyInit | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array> | null;

export interface RequestOptions {
  json?: unknown;
  query?: Query;
  body?: Body;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

const DEFAULT_URL = "http://127.0.0.1:7070";
const TERMINAL_SUBPROTOCOL = "hutch.terminal.v1";

function environment(name: string): string | undefined {
  // NB: no `process` import: Workers and browsers have none, and Node, Bun and Deno all put
  // one on globalThis. Explicit options always win over the environment.
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const value = proc?.env?.[name];
  return value === "" ? undefined : value;
}

export class HutchClient {
  readonly baseUrl: string;
  readonly apiKey: string | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly webSocketImpl: WebSocketConstructor | undefined;

  constructor(options: Omit<ConnectionOptions, "client"> = {}) {
    const baseUrl = (options.baseUrl ?? environment("HUTCH_URL") ?? DEFAULT_URL).replace(/\/+$/, "");
    if (!/^https?:\/\/[^/]+/.test(baseUrl)) {
      throw new ConfigurationError(
        `baseUrl must be an http(s) URL such as ${DEFAULT_URL}, not ${JSON.stringify(baseUrl)}`,
      );
    }
    this.baseUrl = baseUrl;
    this.apiKey = options.apiKey ?? environment("HUTCH_API_KEY");
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") {
      throw new ConfigurationError("no fetch: pass { fetch } (this runtime has no global fetch)");
    }
    // Bound: a Worker's fetch throws "Illegal invocation" when called as a method of another object.
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.webSocketImpl =
      options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  /** The client for a sandbox's options: the given one, or a new one from baseUrl/apiKey. */
  static from(options: ConnectionOptions = {}): HutchClient {
    if (options.client) {
      if (options.baseUrl !== undefined || options.apiKey !== undefined) {
        throw new ConfigurationError("pass either client or baseUrl/apiKey, not both");
      }
      return options.client;
    }
    return new HutchClient(options);
  }

  url(path: string, query?: Query): string {
    let url = this.baseUrl + path;
    if (query) {
      const params = new URLSearchParams();
      const pairs = Array.isArray(query) ? query : Object.entries(query);
      for (const [k, v] of pairs) {
        if (v !== undefined && v !== null) params.append(k, String(v));
      }
      const text = params.toString();
      if (text) url += (url.includes("?") ? "&" : "?") + text;
    }
    return url;
  }

  /** Send one request; the response once its status is known (an error status raises). */
  async send(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { ...options.headers };
    if (this.apiKey) headers["authorization"] = `Bearer ${this.apiKey}`;
    let body: Body | undefined = options.body;
    if (options.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    const init: RequestInit & { duplex?: "half" } = { method, headers, body: (body ?? null) as BodyInit | null };
    if (options.signal) init.signal = options.signal;
    if (body instanceof ReadableStream) init.duplex = "half"; // a streamed upload
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        response = await this.fetchImpl(this.url(path, options.query), init);
      } catch (err) {
        if (options.signal?.aborted) throw err;
        throw new HutchConnectionError(
          `cannot reach the Hutch server at ${this.baseUrl} (${describe(err)}); is \`hutch serve\` running and HUTCH_URL right?`,
          { cause: err },
        );
      }
      if (response.ok) return response;
      let text = "";
      try {
        text = await response.text();
      } catch {
        // the body broke off: the status alone must do
      }
      const error = errorFromBody(response.status, text);
      // NB: create_busy means the server made nothing (too many sandboxes were starting), so
      // sending the same request again is safe — unless its body was a stream, now spent.
      const resendable = !(body instanceof ReadableStream) && attempt < BUSY_RETRIES;
      if (!(error instanceof APIError && error.code === "create_busy") || !resendable) throw error;
      await sleep(busyWait(response), options.signal);
    }
  }

  /** Send one request and return its decoded JSON body (`undefined` for an empty body). */
  async request<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.send(method, path, options);
    let text: string;
    try {
      text = await response.text();
    } catch (err) {
      throw new HutchConnectionError(`the server's answer broke off (${describe(err)})`, { cause: err });
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** Open a WebSocket to the server (terminals), authenticated by subprotocol: browsers and
   * Workers cannot set headers on a WebSocket, and a key never goes into a URL. */
  openWebSocket(path: string): WebSocket {
    const WS = this.webSocketImpl;
    if (!WS) {
      throw new ConfigurationError(
        "this runtime has no global WebSocket (Node before 22): pass { WebSocket } from the `ws` package",
      );
    }
    const url = this.baseUrl.replace(/^http/, "ws") + path;
    const protocols = [TERMINAL_SUBPROTOCOL];
    if (this.apiKey) protocols.push(`hutch.key.${this.apiKey}`);
    return new WS(url, protocols);
  }

  /** Whether `GET /healthz` answers (no key needed). */
  async health(): Promise<boolean> {
    const body = await this.request<{ ok?: boolean }>("GET", "/healthz");
    return body?.ok === true;
  }
}

/** How many times a request answered 503 `create_busy` is sent again (as the Python SDK). */
const BUSY_RETRIES = 10;

/** Milliseconds to wait before sending again: the server's Retry-After, at most 30 s. */
function busyWait(response: Response): number {
  const after = response.headers.get("retry-after") ?? "";
  return /^\d+$/.test(after) ? Math.min(Number(after), 30) * 1000 : 1000;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    return cause instanceof Error ? `${err.message}: ${cause.message}` : err.message;
  }
  return String(err);
}

/** The chunks of a streamed body; a connection that breaks raises HutchConnectionError. */
export async function* bodyChunks(response: Response, what: string): AsyncGenerator<Uint8Array> {
  if (!response.body) return;
  const reader = response.body.getReader();
  let done = false;
  try {
    for (;;) {
      let step: ReadableStreamReadResult<Uint8Array>;
      try {
        step = await reader.read();
      } catch (err) {
        if (err instanceof APIError) throw err;
        throw new HutchConnectionError(`the ${what} stream broke off (${describe(err)})`, { cause: err });
      }
      if (step.done) {
        done = true;
        return;
      }
      yield step.value;
    }
  } finally {
    // NB: a consumer that stops early (break, an exception) cancels the body, which closes the
    // connection: the server then stops the stream (and, for a code run, interrupts it).
    if (!done) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}

/** Percent-encode one path segment (ids may hold characters that are not URL-safe). */
export function seg(value: string | number): string {
  return encodeURIComponent(String(value));
}

/** Milliseconds (the SDK's unit, as in Cloudflare's) to the wire's seconds. */
export function seconds(ms: number | null | undefined): number | null {
  return ms === undefined || ms === null ? null : ms / 1000;
}
