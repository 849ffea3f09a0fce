/** exec, sans-I/O: the request body, the stream decoder (frames -> typed events) and the result. */

import { seconds } from "./client.js";
import { CommandTimeoutError, HutchConnectionError, apiError } from "./errors.js";
import { Channel, FrameDecoder, FrameError, Kind, frameJson } from "./frames.js";
import type { ExecRequestBody } from "./types.js";

export type OutputStream = "stdout" | "stderr";

export interface ExecOptions {
  /** Working directory (the image's when left out). */
  cwd?: string;
  /** Environment variables added for this command. */
  env?: Record<string, string>;
  /** User to run as (the image's when left out). */
  user?: string;
  /** Milliseconds after which the command and its whole process tree are killed. */
  timeout?: number;
  /** Bytes (or text, sent as UTF-8) fed to stdin; left out, stdin is /dev/null. */
  stdin?: string | Uint8Array;
  /** Called with each chunk of output as it arrives, decoded as UTF-8. */
  onOutput?: (stream: OutputStream, data: string) => void;
  /** Called with the result once the command has ended. */
  onComplete?: (result: ExecResult) => void;
  /** Called with the error when the command could not run or timed out. */
  onError?: (error: Error) => void;
  /** Stops waiting (and the command: closing the stream kills it). */
  signal?: AbortSignal;
  /** Accepted for Cloudflare compatibility; output is always streamed. */
  stream?: boolean;
}

/** How a command ended and what it wrote (Cloudflare's `ExecResult`, plus `timedOut`). */
export interface ExecResult {
  success: boolean;
  exitCode: number;
  stdout: string;
  stderr: string;
  command: string;
  /** Milliseconds the command ran in the sandbox. */
  duration: number;
  /** When the result arrived, ISO 8601. */
  timestamp: string;
  timedOut: boolean;
}

export interface ExecStartEvent {
  type: "start";
  timestamp: string;
  command: string;
  pid: number;
}

/** A chunk of output. `bytes` are exact; `data` decodes this chunk alone as UTF-8 (a character
 * cut between two chunks shows as U+FFFD: join `bytes` when that matters). */
export interface ExecOutputEvent {
  type: OutputStream;
  timestamp: string;
  bytes: Uint8Array;
  /** Byte offset of `bytes` in its stream. */
  offset: number;
  readonly data: string;
}

export interface ExecCompleteEvent {
  type: "complete";
  timestamp: string;
  command: string;
  exitCode: number;
  timedOut: boolean;
  /** Milliseconds. */
  duration: number;
}

export type ExecEvent = ExecStartEvent | ExecOutputEvent | ExecCompleteEvent;

const utf8 = new TextDecoder();
const encoder = new TextEncoder();

/** An output event whose `data` is decoded when first read (streams of GBs never need it). */
class OutputEvent implements ExecOutputEvent {
  readonly timestamp = new Date().toISOString();
  private text: string | undefined;
  constructor(
    readonly type: OutputStream,
    readonly bytes: Uint8Array,
    readonly offset: number,
  ) {}
  get data(): string {
    this.text ??= utf8.decode(this.bytes);
    return this.text;
  }
  toJSON(): object {
    return { type: this.type, timestamp: this.timestamp, offset: this.offset, data: this.data };
  }
}

export function outputEvent(type: OutputStream, bytes: Uint8Array, offset: number): ExecOutputEvent {
  return new OutputEvent(type, bytes, offset);
}

export function base64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export function execRequestBody(
  target: { command: string } | { argv: string[] },
  options: ExecOptions,
): ExecRequestBody {
  const stdin = options.stdin;
  return {
    command: "command" in target ? target.command : null,
    argv: "argv" in target ? target.argv : null,
    cwd: options.cwd ?? null,
    env: options.env ?? {},
    user: options.user ?? null,
    timeout: seconds(options.timeout),
    stdin: stdin === undefined ? null : base64(typeof stdin === "string" ? encoder.encode(stdin) : stdin),
  };
}

/** Turns the body of `exec/stream` (or a session's) into events, fed in any chunking. */
export class ExecStreamDecoder {
  private readonly frames = new FrameDecoder();
  finished = false;

  constructor(private readonly command: string) {}

  feed(chunk: Uint8Array): ExecEvent[] {
    if (this.finished) return [];
    let frames;
    try {
      frames = this.frames.feed(chunk);
    } catch (err) {
      if (err instanceof FrameError) {
        throw new HutchConnectionError(`the server sent a malformed exec stream: ${err.message}`);
      }
      throw err;
    }
    const events: ExecEvent[] = [];
    for (const frame of frames) {
      if (frame.stream !== 0) continue;
      if (frame.kind === Kind.DATA) {
        if (frame.channel === Channel.STDOUT) events.push(new OutputEvent("stdout", frame.payload, frame.offset));
        else if (frame.channel === Channel.STDERR) events.push(new OutputEvent("stderr", frame.payload, frame.offset));
      } else if (frame.kind === Kind.EVENT) {
        const body = frameJson(frame);
        if (body["event"] === "started" && typeof body["pid"] === "number") {
          events.push({ type: "start", timestamp: new Date().toISOString(), command: this.command, pid: body["pid"] });
        }
      } else if (frame.kind === Kind.RESULT) {
        this.finished = true;
        events.push(this.complete(frameJson(frame)));
        break;
      }
    }
    return events;
  }

  private complete(body: Record<string, unknown>): ExecCompleteEvent {
    const result = (typeof body["ok"] === "object" && body["ok"] !== null ? body["ok"] : body) as Record<string, unknown>;
    const error = result["error"] as { code?: unknown; message?: unknown } | undefined;
    if (error && typeof error === "object") {
      throw apiError(String(error.code ?? "internal"), String(error.message ?? "the command failed to run"), 500);
    }
    return {
      type: "complete",
      timestamp: new Date().toISOString(),
      command: this.command,
      exitCode: typeof result["exit_code"] === "number" ? result["exit_code"] : -1,
      timedOut: result["timed_out"] === true,
      duration: (typeof result["duration"] === "number" ? result["duration"] : 0) * 1000,
    };
  }

  /** Call when the body ended: checks that the command's result arrived. */
  close(): void {
    if (!this.finished) {
      throw new HutchConnectionError(
        "the exec stream ended before the command's result arrived (the server or its connection went away); the command may still be running",
      );
    }
  }
}

/** Gathers events into an ExecResult, calling onOutput with text decoded across chunk cuts. */
export class OutputCollector {
  private readonly parts: Record<OutputStream, Uint8Array[]> = { stdout: [], stderr: [] };
  private readonly decoders: Record<OutputStream, TextDecoder> = {
    stdout: new TextDecoder(),
    stderr: new TextDecoder(),
  };
  private end: ExecCompleteEvent | undefined;

  constructor(
    private readonly command: string,
    private readonly onOutput?: (stream: OutputStream, data: string) => void,
  ) {}

  add(event: ExecEvent): void {
    if (event.type === "complete") {
      this.end = event;
      return;
    }
    if (event.type === "start") return;
    this.parts[event.type].push(event.bytes);
    if (this.onOutput) {
      const text = this.decoders[event.type].decode(event.bytes, { stream: true });
      if (text) this.onOutput(event.type, text);
    }
  }

  result(): ExecResult {
    if (!this.end) throw new HutchConnectionError("the command's result never arrived");
    return {
      success: this.end.exitCode === 0 && !this.end.timedOut,
      exitCode: this.end.exitCode,
      stdout: joinText(this.parts.stdout),
      stderr: joinText(this.parts.stderr),
      command: this.command,
      duration: this.end.duration,
      timestamp: this.end.timestamp,
      timedOut: this.end.timedOut,
    };
  }
}

export function joinBytes(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function joinText(parts: Uint8Array[]): string {
  return parts.length === 0 ? "" : utf8.decode(joinBytes(parts));
}

export function timeoutError(result: ExecResult, timeoutMs: number | undefined): CommandTimeoutError {
  const limit = timeoutMs === undefined ? "" : ` of ${timeoutMs} ms`;
  return new CommandTimeoutError(
    `the command ran past its timeout${limit} and was killed with its process tree; what it wrote is in the error's .result`,
    result,
  );
}
