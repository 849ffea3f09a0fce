/** The code interpreter: contexts (a live Python or JavaScript interpreter each) and runs with
 * rich results (text, html, png, svg, charts as data...) streamed as they happen. */

import { type HutchClient, bodyChunks, seconds, seg } from "./client.js";
import { HutchConnectionError, apiError } from "./errors.js";
import { Channel, FrameDecoder, Kind, frameJson } from "./frames.js";
import type { CodeContextCreateBody, CodeContextInfo, CodeContextList, CodeRunBody } from "./types.js";

export type Language = "python" | "javascript" | "typescript";

export interface CodeContext {
  readonly id: string;
  readonly language: string;
  readonly cwd: string | null;
  readonly state: string;
  readonly busy: boolean;
}

export interface CreateContextOptions {
  language?: Language;
  cwd?: string;
  /** Environment variables of the interpreter (Cloudflare's name). */
  envVars?: Record<string, string>;
}

export interface OutputMessage {
  text: string;
  timestamp: number;
}

export interface RunCodeOptions {
  /** The context to run in (its state persists); default: the language's default context. */
  context?: CodeContext | string;
  language?: Language;
  /** Milliseconds; the run is interrupted, the context keeps its state. */
  timeout?: number;
  onStdout?: (output: OutputMessage) => void;
  onStderr?: (output: OutputMessage) => void;
  onResult?: (result: Result) => void | Promise<void>;
  onError?: (error: ExecutionError) => void;
  /** Abort to interrupt the run. */
  signal?: AbortSignal;
}

export const CHART_MIME = "application/vnd.hutch.chart+json";

const MIME_NAMES: Record<string, string> = {
  "text/plain": "text",
  "text/html": "html",
  "text/markdown": "markdown",
  "text/latex": "latex",
  "image/png": "png",
  "image/jpeg": "jpeg",
  "image/svg+xml": "svg",
  "application/json": "json",
  "application/javascript": "javascript",
  [CHART_MIME]: "chart",
};

export interface ChartData {
  type: "line" | "bar" | "scatter" | "pie" | "box_and_whisker" | "composite" | "unknown" | string;
  title?: string | null;
  x_label?: string | null;
  y_label?: string | null;
  elements: unknown[];
  [key: string]: unknown;
}

/** One rich output: a `display()` or the last expression's value, in every MIME type given. */
export class Result {
  constructor(
    /** MIME type -> value, as the interpreter gave them. */
    readonly data: Record<string, unknown>,
    readonly isMainResult = false,
  ) {}
  private get(mime: string): string | undefined {
    const v = this.data[mime];
    return v === undefined || v === null ? undefined : typeof v === "string" ? v : JSON.stringify(v);
  }
  get text(): string | undefined { return this.get("text/plain"); }
  get html(): string | undefined { return this.get("text/html"); }
  get markdown(): string | undefined { return this.get("text/markdown"); }
  get latex(): string | undefined { return this.get("text/latex"); }
  /** base64 */
  get png(): string | undefined { return this.get("image/png"); }
  /** base64 */
  get jpeg(): string | undefined { return this.get("image/jpeg"); }
  get svg(): string | undefined { return this.get("image/svg+xml"); }
  get javascript(): string | undefined { return this.get("application/javascript"); }
  get json(): unknown { return this.data["application/json"]; }
  /** A matplotlib figure as data. */
  get chart(): ChartData | undefined {
    const v = this.data[CHART_MIME];
    return v && typeof v === "object" ? (v as ChartData) : undefined;
  }
  /** The short names of the representations present, e.g. `["text", "png", "chart"]`. */
  formats(): string[] {
    return Object.keys(this.data).map((mime) => MIME_NAMES[mime] ?? mime);
  }
  toJSON(): object {
    return { ...this.data, isMainResult: this.isMainResult };
  }
}

export interface ExecutionError {
  name: string;
  value: string;
  traceback: string[];
}

/** What a run produced (Cloudflare's `Execution`, plus `status`, `contextId` and `duration`). */
export class Execution {
  results: Result[] = [];
  logs: { stdout: string[]; stderr: string[] } = { stdout: [], stderr: [] };
  error: ExecutionError | undefined = undefined;
  /** "ok", "error", "timeout" (interrupted) or "dead" (the interpreter died: restart it). */
  status = "ok";
  contextId: string | undefined = undefined;
  /** Milliseconds in the interpreter. */
  duration = 0;
  /** The main result's text, if there is one. */
  get text(): string | undefined {
    return this.results.find((r) => r.isMainResult)?.text;
  }
  toJSON(): object {
    return { results: this.results, logs: this.logs, error: this.error, status: this.status, contextId: this.contextId, duration: this.duration };
  }
}

export type CodeEvent =
  | { type: "stdout" | "stderr"; text: string }
  | { type: "result"; result: Result }
  | { type: "error"; error: ExecutionError }
  | { type: "end"; execution: Execution };

function contextId(context: CodeContext | string): string {
  return typeof context === "string" ? context : context.id;
}

function toContext(info: CodeContextInfo): CodeContext {
  return { id: info.id, language: info.language, cwd: info.cwd ?? null, state: info.state, busy: info.busy ?? false };
}

export class CodeInterpreter {
  private readonly path: string;
  constructor(
    private readonly client: HutchClient,
    sandboxPath: string,
  ) {
    this.path = `${sandboxPath}/code`;
  }

  async createContext(options: CreateContextOptions = {}): Promise<CodeContext> {
    const body: CodeContextCreateBody = { language: options.language ?? "python", cwd: options.cwd ?? null, env: options.envVars ?? {} };
    return toContext(await this.client.request<CodeContextInfo>("POST", `${this.path}/contexts`, { json: body }));
  }

  async listContexts(): Promise<CodeContext[]> {
    const body = await this.client.request<CodeContextList>("GET", `${this.path}/contexts`);
    return body.contexts.map(toContext);
  }

  async deleteContext(context: CodeContext | string): Promise<void> {
    await this.client.request("DELETE", `${this.path}/contexts/${seg(contextId(context))}`);
  }

  async restartContext(context: CodeContext | string): Promise<CodeContext> {
    return toContext(await this.client.request<CodeContextInfo>("POST", `${this.path}/contexts/${seg(contextId(context))}/restart`));
  }

  async *runStream(code: string, options: Omit<RunCodeOptions, "onStdout" | "onStderr" | "onResult" | "onError"> = {}): AsyncGenerator<CodeEvent> {
    if (typeof code !== "string") throw new TypeError("code must be a string");
    const body: CodeRunBody = {
      code,
      context_id: options.context === undefined ? null : contextId(options.context),
      language: options.language ?? null,
      timeout: seconds(options.timeout),
    };
    const response = await this.client.send("POST", `${this.path}/run/stream`, {
      json: body,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const frames = new FrameDecoder();
    const decoders: Record<number, TextDecoder> = { [Channel.STDOUT]: new TextDecoder(), [Channel.STDERR]: new TextDecoder() };
    const ex = new Execution();
    for await (const chunk of bodyChunks(response, "code run")) {
      for (const frame of frames.feed(chunk)) {
        if (frame.kind === Kind.DATA) {
          const decoder = decoders[frame.channel];
          if (!decoder) continue;
          const text = decoder.decode(frame.payload, { stream: true });
          if (!text) continue;
          const type = frame.channel === Channel.STDOUT ? "stdout" : "stderr";
          ex.logs[type].push(text);
          yield { type, text };
        } else if (frame.kind === Kind.EVENT) {
          const ev = frameJson(frame);
          if (ev["event"] === "context") {
            ex.contextId = String(ev["id"]);
          } else if (ev["event"] === "result") {
            const data = ev["data"] && typeof ev["data"] === "object" ? (ev["data"] as Record<string, unknown>) : {};
            const result = new Result(data, ev["is_main_result"] === true);
            ex.results.push(result);
            yield { type: "result", result };
          } else if (ev["event"] === "error") {
            const tb = ev["traceback"];
            const error: ExecutionError = {
              name: String(ev["name"] ?? "Error"),
              value: String(ev["value"] ?? ""),
              traceback: Array.isArray(tb) ? tb.map(String) : [],
            };
            ex.error = error;
            yield { type: "error", error };
          }
        } else if (frame.kind === Kind.RESULT) {
          const end = frameJson(frame);
          const failure = end["error"] as { code?: unknown; message?: unknown } | undefined;
          if (failure && typeof failure === "object") {
            throw apiError(String(failure.code ?? "internal"), String(failure.message ?? "the code could not run"), 500);
          }
          ex.status = String(end["status"] ?? "ok");
          ex.duration = (typeof end["duration"] === "number" ? end["duration"] : 0) * 1000;
          if (typeof end["context_id"] === "string") ex.contextId = end["context_id"];
          yield { type: "end", execution: ex };
          return;
        }
      }
    }
    throw new HutchConnectionError("the code run's stream ended before its result arrived (the server or its connection went away)");
  }

  async run(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    let execution = new Execution();
    for await (const event of this.runStream(code, options)) {
      switch (event.type) {
        case "stdout":
          options.onStdout?.({ text: event.text, timestamp: Date.now() });
          break;
        case "stderr":
          options.onStderr?.({ text: event.text, timestamp: Date.now() });
          break;
        case "result":
          await options.onResult?.(event.result);
          break;
        case "error":
          options.onError?.(event.error);
          break;
        case "end":
          execution = event.execution;
          break;
      }
    }
    return execution;
  }
}
