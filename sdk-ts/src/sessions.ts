/** Sessions: persistent shells whose `cd`, `export`, functions and aliases carry over between
 * commands (run one at a time; a timeout interrupts the command, not the session). */

import { type HutchClient, bodyChunks, seconds, seg } from "./client.js";
import {
  type ExecEvent,
  type ExecOptions,
  type ExecResult,
  ExecStreamDecoder,
  OutputCollector,
  timeoutError,
} from "./exec.js";
import type { SessionExecBody, SessionInfo } from "./types.js";

export interface SessionOptions {
  id?: string;
  cwd?: string;
  env?: Record<string, string>;
}

export type SessionExecOptions = Pick<ExecOptions, "timeout" | "onOutput" | "onComplete" | "onError" | "signal">;

export class ExecutionSession {
  readonly id: string;
  private readonly path: string;

  constructor(
    private readonly client: HutchClient,
    sandboxPath: string,
    readonly info: SessionInfo,
  ) {
    this.id = info.id;
    this.path = `${sandboxPath}/sessions/${seg(info.id)}`;
  }

  async *execStream(command: string, options: SessionExecOptions = {}): AsyncGenerator<ExecEvent> {
    const body: SessionExecBody = { command, timeout: seconds(options.timeout) };
    const response = await this.client.send("POST", `${this.path}/exec/stream`, {
      json: body,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const decoder = new ExecStreamDecoder(command);
    for await (const chunk of bodyChunks(response, "session exec")) {
      for (const event of decoder.feed(chunk)) yield event;
    }
    decoder.close();
  }

  async exec(command: string, options: SessionExecOptions = {}): Promise<ExecResult> {
    const collector = new OutputCollector(command, options.onOutput);
    try {
      for await (const event of this.execStream(command, options)) collector.add(event);
      const result = collector.result();
      if (result.timedOut) throw timeoutError(result, options.timeout);
      options.onComplete?.(result);
      return result;
    } catch (err) {
      options.onError?.(err as Error);
      throw err;
    }
  }

  async delete(): Promise<void> {
    await this.client.request("DELETE", this.path);
  }
}
