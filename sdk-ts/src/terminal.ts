/**
 * Interactive terminals: a shell on a pseudo-terminal in the sandbox, over a WebSocket.
 * Binary messages carry bytes both ways; text messages are JSON control (`attached`, `exit`,
 * `error` from the server; `resize` from us). The shell outlives the connection: `detach()`
 * (or a dropped network) leaves it running and `attachTerminal(id, since)` replays from `since`.
 */

import "./dispose.js";
import { type HutchClient, seg } from "./client.js";
import { HutchConnectionError, InvalidSizeError, NotFoundError, apiError } from "./errors.js";
import type { TerminalCreateBody, TerminalInfo } from "./types.js";

export interface TerminalOptions {
  cols?: number;
  rows?: number;
  /** A shell name on PATH or a path (default: the image's shell, else bash, else sh). */
  shell?: string;
  env?: Record<string, string>;
  cwd?: string;
  /** Milliseconds with no client attached before the terminal is closed (server default 15 min). */
  idleTimeout?: number;
}

const CLOSE_CODES: Record<number, string> = {
  4401: "unauthorized",
  4404: "terminal_not_found",
  4409: "sandbox_not_running",
  4503: "sandbox_unavailable",
};
const MAX_DIMENSION = 1000;
const OPEN_TIMEOUT_MS = 30_000;

type Item = { kind: "data"; bytes: Uint8Array } | { kind: "end" } | { kind: "error"; error: Error };

function checkSize(cols: number, rows: number): void {
  for (const [name, value] of [["cols", cols], ["rows", rows]] as const) {
    if (!Number.isInteger(value) || value < 1 || value > MAX_DIMENSION) {
      throw new InvalidSizeError(`${name} must be an integer between 1 and ${MAX_DIMENSION}, not ${value}`, { status: 422, code: "invalid_size" });
    }
  }
}

const encoder = new TextEncoder();

export class Terminal implements AsyncIterable<Uint8Array> {
  /** Bytes of output received, counted from the terminal's start (pass to attach as `since`). */
  offset = 0;
  pid = 0;
  /** The shell's exit code once it exited (null: it was closed before it exited). */
  exitCode: number | null = null;
  private readonly queue: Item[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  private readonly path: string;

  private constructor(
    private readonly client: HutchClient,
    sandboxPath: string,
    readonly id: string,
    private readonly ws: WebSocket,
  ) {
    this.path = `${sandboxPath}/terminals/${seg(id)}`;
  }

  static async open(client: HutchClient, sandboxPath: string, options: TerminalOptions): Promise<Terminal> {
    const cols = options.cols ?? 80;
    const rows = options.rows ?? 24;
    checkSize(cols, rows);
    const body: TerminalCreateBody = { cols, rows, shell: options.shell ?? null, env: options.env ?? {}, cwd: options.cwd ?? null };
    if (options.idleTimeout !== undefined) body.idle_timeout = options.idleTimeout / 1000;
    const info = await client.request<TerminalInfo>("POST", `${sandboxPath}/terminals`, { json: body });
    return Terminal.attach(client, sandboxPath, info.id, 0);
  }

  static async attach(client: HutchClient, sandboxPath: string, terminalId: string, since: number): Promise<Terminal> {
    const ws = client.openWebSocket(`${sandboxPath}/terminals/${seg(terminalId)}/ws?since=${since}`);
    ws.binaryType = "arraybuffer";
    const terminal = new Terminal(client, sandboxPath, terminalId, ws);
    terminal.offset = since;
    await terminal.handshake();
    return terminal;
  }

  private handshake(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let attached = false;
      const timer = setTimeout(() => {
        reject(new HutchConnectionError(`terminal ${this.id}: no answer within ${OPEN_TIMEOUT_MS} ms`));
        this.ws.close();
      }, OPEN_TIMEOUT_MS);
      this.ws.addEventListener("message", (event: MessageEvent) => {
        const data: unknown = event.data;
        if (typeof data === "string") {
          const control = JSON.parse(data) as Record<string, unknown>;
          if (control["type"] === "attached" && !attached) {
            attached = true;
            this.offset = Number(control["offset"] ?? this.offset);
            this.pid = Number(control["pid"] ?? 0);
            clearTimeout(timer);
            resolve();
          } else if (control["type"] === "exit") {
            const code = control["exit_code"];
            this.exitCode = typeof code === "number" ? code : null;
            this.push({ kind: "end" });
          } else if (control["type"] === "error") {
            this.push({ kind: "error", error: apiError(String(control["code"]), String(control["message"]), 422) });
          }
          return;
        }
        const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data as ArrayBufferLike);
        this.offset += bytes.length;
        this.push({ kind: "data", bytes });
      });
      this.ws.addEventListener("close", (event: CloseEvent) => {
        const wire = CLOSE_CODES[event.code];
        const error = wire
          ? apiError(wire, `terminal ${this.id}: ${event.reason || wire}`, event.code - 4000)
          : undefined;
        clearTimeout(timer);
        if (!attached) {
          reject(error ?? new HutchConnectionError(`terminal ${this.id}: the WebSocket closed (${event.code}) before it attached`));
          return;
        }
        this.push(error ? { kind: "error", error } : { kind: "end" });
      });
      this.ws.addEventListener("error", () => {
        // A close event follows with the code; nothing to add here.
      });
    });
  }

  private push(item: Item): void {
    this.queue.push(item);
    const wake = this.waiter;
    this.waiter = undefined;
    wake?.();
  }

  /** Type into the terminal (a string is sent as UTF-8). */
  send(data: string | Uint8Array): void {
    if (this.ws.readyState !== 1) throw new HutchConnectionError(`terminal ${this.id} is not connected`);
    this.ws.send(typeof data === "string" ? encoder.encode(data) : data);
  }

  /** The next output bytes; an empty array once the shell exited or the connection ended. */
  async read(timeout?: number): Promise<Uint8Array> {
    for (;;) {
      const item = this.queue.shift();
      if (item) {
        if (item.kind === "data") return item.bytes;
        if (item.kind === "error") throw item.error;
        this.ended = true;
        return new Uint8Array(0);
      }
      if (this.ended) return new Uint8Array(0);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const arrived = new Promise<boolean>((resolve) => {
        this.waiter = () => resolve(true);
        if (timeout !== undefined) timer = setTimeout(() => resolve(false), timeout);
      });
      const ok = await arrived;
      clearTimeout(timer);
      if (!ok) {
        this.waiter = undefined;
        throw new Error(`terminal ${this.id}: no output within ${timeout} ms`, { cause: "timeout" });
      }
    }
  }

  /** Read until the output holds `pattern`; returns everything read (as text). */
  async readUntil(pattern: string | RegExp, timeout = 30_000): Promise<string> {
    const decoder = new TextDecoder();
    let seen = "";
    const deadline = Date.now() + timeout;
    const found = () => (typeof pattern === "string" ? seen.includes(pattern) : pattern.test(seen));
    while (!found()) {
      const chunk = await this.read(Math.max(deadline - Date.now(), 1));
      if (chunk.length === 0) throw new Error(`the shell exited before printing ${String(pattern)}: ${JSON.stringify(seen.slice(-500))}`);
      seen += decoder.decode(chunk, { stream: true });
    }
    return seen;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      const chunk = await this.read();
      if (chunk.length === 0) return;
      yield chunk;
    }
  }

  /** Set the size; the program in it gets SIGWINCH. */
  async resize(cols: number, rows: number): Promise<void> {
    checkSize(cols, rows);
    await this.client.request("POST", `${this.path}/resize`, { json: { cols, rows } });
  }

  /** Read (and drop) output until the shell exits; its exit code. */
  async wait(timeout?: number): Promise<number | null> {
    while ((await this.read(timeout)).length > 0) {
      // drop it
    }
    return this.exitCode;
  }

  async info(): Promise<TerminalInfo> {
    return this.client.request<TerminalInfo>("GET", this.path);
  }

  /** Disconnect and leave the shell running (reattach with `sandbox.attachTerminal`). */
  detach(): void {
    this.ended = true;
    this.ws.close(1000);
  }

  /** End the shell (and what it started) and disconnect. Idempotent. */
  async close(): Promise<void> {
    this.ended = true;
    if (this.ws.readyState <= 1) this.ws.close(1000);
    try {
      await this.client.request("DELETE", this.path);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err; // already gone: exited and idled out
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
