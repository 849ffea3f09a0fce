/**
 * Background processes: start, inspect, kill, stdin, and logs replayed from any byte offset,
 * then followed live. A dropped connection (a server restart included) is resumed from the last
 * offset seen: every byte arrives exactly once, in order.
 */

import { type HutchClient, bodyChunks, seconds, seg } from "./client.js";
import {
  HutchConnectionError,
  ProcessExitedError,
  ProcessTimeoutError,
  SandboxUnavailableError,
  apiError,
} from "./errors.js";
import { type ExecOutputEvent, outputEvent } from "./exec.js";
import { Channel, FrameDecoder, Kind, frameJson } from "./frames.js";
import type { PortWaitResult, ProcessInfo, ProcessLogsBody, ProcessStartBody, WaitForPortBody } from "./types.js";

export type ProcessStatus = ProcessInfo["status"];

export interface ProcessOptions {
  /** An id for the process (unique among running ones); generated when left out. */
  processId?: string;
  cwd?: string;
  env?: Record<string, string>;
  user?: string;
  /** Keep stdin open for `writeStdin` (default true). */
  stdin?: boolean;
  /** Bytes of output kept (stdout and stderr together); older output is dropped. */
  logLimit?: number;
  /** Milliseconds it may run: then the sandbox kills it and its children (SIGKILL), whether or
   * not anyone is connected, and `timedOut` says so. Left out: no limit. */
  timeout?: number;
}

export interface StreamLogsOptions {
  /** The stdout offset to start from (0: everything kept). */
  since?: number;
  /** The stderr offset (default: `since`). */
  sinceStderr?: number;
  /** Keep following until the process ends (default); false stops at what is there. */
  follow?: boolean;
  /** Stop after this many milliseconds even if the process still runs. */
  timeout?: number;
  signal?: AbortSignal;
}

/** A chunk of a process's output, with its byte offset (pass `offset + bytes.length` as
 * `since` to resume after it). */
export type LogEvent = ExecOutputEvent & { processId: string };

/** The last item of a log stream: how the process ended (or where it was at a timeout). */
export interface LogEndEvent {
  type: "exit";
  processId: string;
  timestamp: string;
  status: ProcessStatus;
  exitCode: number | null;
  process: ProcessInfo;
}

export interface WaitForPortOptions {
  mode?: "tcp" | "http";
  path?: string;
  /** An HTTP status, or a range, that counts as ready (default 200-399). */
  status?: number | { min: number; max: number };
  /** Milliseconds (default 60 000). */
  timeout?: number;
}

export interface WaitForLogResult {
  /** The line the match is on. */
  line: string;
  /** The regular expression's match, when a RegExp was given. */
  match?: RegExpMatchArray;
}

// How long a log stream keeps trying to reconnect to a server that went away (a restart).
const RECONNECT_FOR_MS = 60_000;
const LOG_WINDOW = 64 * 1024;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Where a reader is in each channel; drops bytes it has had already (exactly once). */
class LogCursor {
  offsets: Record<number, number>;
  constructor(stdout: number, stderr: number) {
    this.offsets = { [Channel.STDOUT]: stdout, [Channel.STDERR]: stderr };
  }
  accept(channel: number, offset: number, data: Uint8Array, processId: string): LogEvent | undefined {
    const seen = this.offsets[channel];
    if (seen === undefined) return undefined;
    const end = offset + data.length;
    if (end <= seen) return undefined;
    if (offset < seen) {
      data = data.subarray(seen - offset);
      offset = seen;
    }
    this.offsets[channel] = end;
    const event = outputEvent(channel === Channel.STDOUT ? "stdout" : "stderr", data, offset) as LogEvent;
    (event as { processId: string }).processId = processId;
    return event;
  }
}

export class Process {
  readonly id: string;
  info: ProcessInfo;
  private readonly path: string;

  constructor(
    private readonly client: HutchClient,
    sandboxPath: string,
    info: ProcessInfo,
  ) {
    this.id = info.id;
    this.info = info;
    this.path = `${sandboxPath}/processes/${seg(info.id)}`;
  }

  get pid(): number {
    return this.info.pid;
  }
  get command(): string {
    return this.info.command ?? this.info.argv.join(" ");
  }
  get status(): ProcessStatus {
    return this.info.status;
  }
  get exitCode(): number | null {
    return this.info.exit_code ?? null;
  }
  /** Whether it was killed at the `timeout` it was started with. */
  get timedOut(): boolean {
    return this.info.timed_out ?? false;
  }
  get startTime(): Date {
    return new Date(this.info.started_at * 1000);
  }
  get endTime(): Date | undefined {
    return this.info.ended_at == null ? undefined : new Date(this.info.ended_at * 1000);
  }
  get running(): boolean {
    return this.info.status === "starting" || this.info.status === "running";
  }

  /** Fetch its state again; returns the status. */
  async getStatus(): Promise<ProcessStatus> {
    this.info = await this.client.request<ProcessInfo>("GET", this.path);
    return this.info.status;
  }

  /** Send a signal to its whole process tree (name, short name or number). */
  async kill(signal: string | number = "SIGTERM"): Promise<void> {
    this.info = await this.client.request<ProcessInfo>("POST", `${this.path}/kill`, { json: { signal } });
  }

  async writeStdin(data: string | Uint8Array): Promise<void> {
    await this.client.request("POST", `${this.path}/stdin`, {
      body: typeof data === "string" ? new TextEncoder().encode(data) : data,
    });
  }

  async closeStdin(): Promise<void> {
    await this.client.request("POST", `${this.path}/stdin/close`);
  }

  /** Everything it printed that is still kept, as text. */
  async getLogs(): Promise<{ stdout: string; stderr: string; processId: string; process: ProcessInfo }> {
    const body = await this.client.request<ProcessLogsBody>("GET", `${this.path}/logs`);
    this.info = body.process;
    return { stdout: body.stdout, stderr: body.stderr, processId: this.id, process: body.process };
  }

  /** Its output from `since`, then live until it ends; the last item is an `exit` event. */
  streamLogs(options: StreamLogsOptions = {}): AsyncGenerator<LogEvent | LogEndEvent> {
    const since = options.since ?? 0;
    return this.follow(new LogCursor(since, options.sinceStderr ?? since), options, true);
  }

  private async *follow(
    cursor: LogCursor,
    options: StreamLogsOptions,
    data: boolean,
  ): AsyncGenerator<LogEvent | LogEndEvent> {
    const deadline = options.timeout === undefined ? undefined : Date.now() + options.timeout;
    let giveUpAt: number | undefined;
    for (;;) {
      const remaining = deadline === undefined ? undefined : Math.max(deadline - Date.now(), 1);
      const query: Record<string, string> = {
        stdout_offset: String(cursor.offsets[Channel.STDOUT]),
        stderr_offset: String(cursor.offsets[Channel.STDERR]),
        follow: options.follow === false ? "false" : "true",
      };
      if (remaining !== undefined) query["timeout"] = String(remaining / 1000);
      if (!data) query["data"] = "false";
      const frames = new FrameDecoder();
      let end: ProcessInfo | undefined;
      try {
        const response = await this.client.send("GET", `${this.path}/logs/stream`, {
          query,
          ...(options.signal ? { signal: options.signal } : {}),
        });
        for await (const chunk of bodyChunks(response, "process logs")) {
          for (const frame of frames.feed(chunk)) {
            if (frame.kind === Kind.DATA) {
              const event = cursor.accept(frame.channel, frame.offset, frame.payload, this.id);
              if (event) {
                giveUpAt = undefined;
                yield event;
              }
            } else if (frame.kind === Kind.EVENT) {
              const body = frameJson(frame);
              // Output older than the log limit was dropped: start at the first byte kept.
              for (const [name, channel] of [["stdout", Channel.STDOUT], ["stderr", Channel.STDERR]] as const) {
                const skipped = body[`${name}_skipped`];
                if (Array.isArray(skipped) && skipped.length === 2) {
                  cursor.offsets[channel] = Math.max(cursor.offsets[channel] ?? 0, Number(skipped[1]));
                }
              }
            } else if (frame.kind === Kind.RESULT) {
              const body = frameJson(frame);
              const error = body["error"] as { code?: unknown; message?: unknown } | undefined;
              if (error && typeof error === "object") {
                throw apiError(String(error.code), String(error.message), 500);
              }
              end = body["process"] as ProcessInfo;
              break;
            }
          }
          if (end) break;
        }
      } catch (err) {
        if (!(err instanceof HutchConnectionError || err instanceof SandboxUnavailableError)) throw err;
        if (options.signal?.aborted) throw err;
        // The server or the connection went away: resume from the offsets seen so far.
        const now = Date.now();
        giveUpAt ??= now + RECONNECT_FOR_MS;
        if (now > giveUpAt || (deadline !== undefined && now > deadline)) throw err;
        await sleep(200);
        continue;
      }
      if (end) {
        this.info = end;
        yield {
          type: "exit",
          processId: this.id,
          timestamp: new Date().toISOString(),
          status: end.status,
          exitCode: end.exit_code ?? null,
          process: end,
        };
        return;
      }
      // The body ended without a RESULT: the connection was cut. Resume.
      await sleep(50);
    }
  }

  /** Wait until it ends (milliseconds; it is not killed at the timeout). */
  async waitForExit(timeout?: number): Promise<{ exitCode: number | null; status: ProcessStatus }> {
    const options: StreamLogsOptions = timeout === undefined ? {} : { timeout };
    for await (const _ of this.follow(new LogCursor(0, 0), options, false)) {
      // only the end matters
    }
    if (this.running) {
      throw new ProcessTimeoutError(
        `process ${JSON.stringify(this.id)} still runs after ${timeout} ms; it was not stopped (kill it with process.kill())`,
        this.info,
      );
    }
    return { exitCode: this.exitCode, status: this.status };
  }

  /** Wait until its output (stdout or stderr, printed before the call too) holds `pattern`. */
  async waitForLog(pattern: string | RegExp, timeout?: number): Promise<WaitForLogResult> {
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    const tails = { stdout: "", stderr: "" };
    const options: StreamLogsOptions = timeout === undefined ? {} : { timeout };
    for await (const event of this.follow(new LogCursor(0, 0), options, true)) {
      if (event.type === "exit") break;
      const text = tails[event.type] + decoders[event.type].decode(event.bytes, { stream: true });
      let at = -1;
      let match: RegExpMatchArray | undefined;
      if (typeof pattern === "string") {
        at = text.indexOf(pattern);
      } else {
        const found = text.match(pattern);
        if (found) {
          match = found;
          at = found.index ?? 0;
        }
      }
      if (at >= 0) {
        const start = text.lastIndexOf("\n", at) + 1;
        const stop = text.indexOf("\n", at);
        const line = text.slice(start, stop < 0 ? undefined : stop).replace(/\r$/, "");
        return match ? { line, match } : { line };
      }
      tails[event.type] = text.slice(-LOG_WINDOW);
    }
    const shown = String(pattern);
    if (this.running) {
      throw new ProcessTimeoutError(`process ${JSON.stringify(this.id)} did not print ${shown} within ${timeout} ms`, this.info);
    }
    throw new ProcessExitedError(
      `process ${JSON.stringify(this.id)} ended (${this.status}, exit code ${this.exitCode}) without printing ${shown}; see getLogs()`,
      this.info,
    );
  }

  /** Wait until `port` accepts connections (mode "tcp") or answers HTTP (mode "http"). */
  async waitForPort(port: number, options: WaitForPortOptions = {}): Promise<void> {
    const status = options.status ?? { min: 200, max: 399 };
    const range = typeof status === "number" ? { min: status, max: status } : status;
    const timeout = options.timeout ?? 60_000;
    const body: WaitForPortBody = {
      port,
      mode: options.mode ?? (options.path !== undefined ? "http" : "tcp"),
      path: options.path ?? "/",
      status_min: range.min,
      status_max: range.max,
      timeout: seconds(timeout),
    };
    const result = await this.client.request<PortWaitResult>("POST", `${this.path}/wait-for-port`, { json: body });
    this.info = result.process;
    if (result.ready) return;
    if (!this.running) {
      throw new ProcessExitedError(
        `process ${JSON.stringify(this.id)} ended (${this.status}, exit code ${this.exitCode}) before port ${port} was ready; see getLogs()`,
        this.info,
      );
    }
    throw new ProcessTimeoutError(`port ${port} of process ${JSON.stringify(this.id)} was not ready within ${timeout} ms`, this.info);
  }

  toJSON(): ProcessInfo {
    return this.info;
  }
}

export function processStartBody(command: string | string[], options: ProcessOptions): ProcessStartBody {
  const body: ProcessStartBody = {
    id: options.processId ?? null,
    cwd: options.cwd ?? null,
    env: options.env ?? {},
    user: options.user ?? null,
    stdin: options.stdin ?? true,
    log_limit: options.logLimit ?? null,
  };
  // Left out when not given: a server without process timeouts still takes the body.
  if (options.timeout !== undefined) body.timeout = seconds(options.timeout);
  if (typeof command === "string") body.command = command;
  else body.argv = command;
  return body;
}
