/** A sandbox's events (`sandbox.events()`): created, started, paused, resumed, stopped,
 * oom_killed, error, destroyed — from the server's Server-Sent Events stream
 * (`GET /v1/sandboxes/{id}/events`), oldest first, then live. A dropped connection (a server
 * restart included) resumes after the last event seen: none is lost or repeated. */

import { type HutchClient, bodyChunks } from "./client.js";
import { HutchConnectionError, SandboxUnavailableError } from "./errors.js";

export type SandboxEventType =
  | "created"
  | "started"
  | "paused"
  | "resumed"
  | "stopped"
  | "oom_killed"
  | "error"
  | "destroyed";

/** Something that happened to a sandbox. */
export interface SandboxEvent {
  /** Its number in the sandbox's sequence (1, 2, ...): pass the last one seen as `after`. */
  seq: number;
  type: SandboxEventType;
  /** When it happened. */
  at: Date;
  /** The details: `reason` (paused, stopped, error); `command`, `host_pid` and `count`
   * (oom_killed); `image` (created). */
  data: Record<string, unknown>;
  /** `data.reason`, if the event has one. */
  reason: string | null;
}

export interface EventsOptions {
  /** Only events after this `seq` (default 0: every event kept). */
  after?: number;
  /** Wait for new events until the sandbox is destroyed (default); false stops at what is there. */
  follow?: boolean;
  /** Stop after this many milliseconds. */
  timeout?: number;
  signal?: AbortSignal;
}

// How long the stream keeps trying to reconnect to a server that went away (a restart).
const RECONNECT_FOR_MS = 60_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Sans-I/O: feed it the bytes of an SSE body; it returns the complete events in them. */
export class EventStreamDecoder {
  private buffer = "";
  private readonly text = new TextDecoder();

  feed(chunk: Uint8Array): SandboxEvent[] {
    this.buffer = (this.buffer + this.text.decode(chunk, { stream: true })).replace(/\r\n/g, "\n");
    const events: SandboxEvent[] = [];
    let end: number;
    while ((end = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""));
      if (data.length === 0) continue; // a comment (keep-alive) or a retry: line
      const body = JSON.parse(data.join("\n")) as { seq: number; type: SandboxEventType; at: string; data?: Record<string, unknown> };
      const details = body.data ?? {};
      events.push({
        seq: Number(body.seq),
        type: body.type,
        at: new Date(body.at),
        data: details,
        reason: typeof details["reason"] === "string" ? details["reason"] : null,
      });
    }
    return events;
  }
}

/** Follow `path`'s events from `options.after`, resuming after a dropped connection. */
export async function* followEvents(
  client: HutchClient,
  path: string,
  options: EventsOptions = {},
): AsyncGenerator<SandboxEvent> {
  let after = options.after ?? 0;
  const follow = options.follow !== false;
  const deadline = options.timeout === undefined ? undefined : Date.now() + options.timeout;
  let giveUpAt: number | undefined;
  for (;;) {
    const query: Record<string, string> = { after: String(after), follow: String(follow) };
    if (deadline !== undefined) query["timeout"] = String(Math.max(deadline - Date.now(), 1) / 1000);
    const decoder = new EventStreamDecoder();
    try {
      const response = await client.send("GET", path, {
        query,
        headers: { accept: "text/event-stream" },
        ...(options.signal ? { signal: options.signal } : {}),
      });
      for await (const chunk of bodyChunks(response, "events")) {
        giveUpAt = undefined;
        for (const event of decoder.feed(chunk)) {
          after = event.seq;
          yield event;
          if (event.type === "destroyed") return;
        }
        if (deadline !== undefined && Date.now() > deadline) return;
      }
    } catch (err) {
      if (!(err instanceof HutchConnectionError || err instanceof SandboxUnavailableError)) throw err;
      if (options.signal?.aborted) throw err;
      const now = Date.now();
      if (deadline !== undefined && now > deadline) return;
      giveUpAt ??= now + RECONNECT_FOR_MS;
      if (now > giveUpAt) throw err;
      await sleep(200);
      continue;
    }
    if (!follow || (deadline !== undefined && Date.now() > deadline)) return;
    // The server ended the stream (it shuts down): resume after the last event seen.
    await sleep(50);
  }
}
