/** Sandboxes: create, find, destroy, and everything that runs in them. Method names and
 * shapes follow Cloudflare's `@cloudflare/sandbox`; times are milliseconds as there. */

import "./dispose.js";
import { type ConnectionOptions, HutchClient, bodyChunks, seg } from "./client.js";
import { SandboxNotFoundError, SessionNotFoundError } from "./errors.js";
import { type EventsOptions, type SandboxEvent, followEvents } from "./events.js";
import { CodeInterpreter, type CodeContext, type CodeEvent, type CreateContextOptions, type Execution, type RunCodeOptions } from "./code.js";
import {
  type ExecEvent,
  type ExecOptions,
  type ExecResult,
  ExecStreamDecoder,
  OutputCollector,
  execRequestBody,
  timeoutError,
} from "./exec.js";
import {
  type FileContent,
  type FileInfo,
  Files,
  type GitCheckoutOptions,
  type ListFilesOptions,
  type ReadFileOptions,
  type WatchEvent,
  type WatchOptions,
  type WriteFileOptions,
} from "./files.js";
import {
  type LogEndEvent,
  type LogEvent,
  Process,
  type ProcessOptions,
  type StreamLogsOptions,
  processStartBody,
} from "./processes.js";
import {
  type Backup,
  type BackupTarget,
  type Duration,
  type SandboxMetrics,
  type SandboxState,
  type Snapshot,
  backupBody,
  durationBody,
  toBackup,
  toMetrics,
  toSnapshot,
  toState,
} from "./lifecycle.js";
import { ExecutionSession, type SessionOptions } from "./sessions.js";
import { Terminal, type TerminalOptions } from "./terminal.js";
import type {
  BackupInfo,
  BackupList,
  BucketMountCreateBody,
  BucketMountInfo,
  BucketMountList,
  EnvBody,
  ForkBody,
  ExposedPortInfo,
  ExposedPortList,
  KillAllResult,
  NetworkInfo,
  NetworkUpdateBody,
  PortExposeBody,
  ProcessInfo,
  ProcessList,
  SandboxCreateBody,
  SandboxInfo,
  SandboxList,
  SandboxMetricsBody,
  RestoreBody,
  SessionCreateBody,
  SnapshotCreateBody,
  SnapshotInfo,
  SnapshotList,
  SessionInfo,
  SessionList,
  TerminalInfo,
  TerminalList,
  TimeoutUpdateBody,
} from "./types.js";

export interface SandboxOptions extends ConnectionOptions {
  /** The id to create it under (create: SandboxExistsError if taken); generated when left out. */
  id?: string;
  /** The image to run (default "default": Debian with Python, Node and git). */
  image?: string;
  env?: Record<string, string>;
  cpu?: number;
  memoryMb?: number;
  diskMb?: number;
  pidsLimit?: number;
  /** "none" (default: no outbound connections) or "internet". */
  network?: "none" | "internet";
  networkAllow?: string[];
  networkDeny?: string[];
  /** Idle time after which it sleeps (see onIdle), e.g. "10m"; milliseconds when a number. */
  sleepAfter?: Duration;
  /** Never sleep for idleness. */
  keepAlive?: boolean;
  /** How it sleeps when idle: "pause" (default: frozen, memory kept) or "stop" (disk kept). */
  onIdle?: "pause" | "stop";
  /** What the end of its lifetime does: "destroy" (default), "stop" or "pause". */
  onTimeout?: "destroy" | "stop" | "pause";
  /** A snapshot (id or name) to start from instead of a fresh image. */
  snapshot?: string;
  runtime?: "runc" | "gvisor";
  labels?: Record<string, string>;
  /** Maximum lifetime: milliseconds, or a duration such as "1h" (left out: until destroyed). */
  timeout?: Duration;
  /** Environment variables stored encrypted by the server and never returned. */
  secrets?: Record<string, string>;
  egressSecrets?: SandboxCreateBody["egress_secrets"];
  /** Start the image's ENTRYPOINT+CMD as the background process "entrypoint". */
  startEntrypoint?: boolean;
}

export interface ExposePortOptions {
  name?: string;
}

/** A preview URL of a sandbox port (Cloudflare's `exposePort` result). */
export interface ExposedPort {
  port: number;
  name: string | null;
  url: string;
}

export interface MountBucketOptions {
  endpoint: string;
  credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  readOnly?: boolean;
  prefix?: string;
  region?: string;
  /** Accepted for Cloudflare compatibility (every S3-compatible provider works alike). */
  provider?: string;
}

function createBody(options: SandboxOptions, id?: string): SandboxCreateBody {
  const body: SandboxCreateBody = {
    image: options.image ?? "default",
    env: options.env ?? {},
    labels: options.labels ?? {},
    network: options.network ?? "none",
    network_allow: options.networkAllow ?? [],
    network_deny: options.networkDeny ?? [],
    keep_alive: options.keepAlive ?? false,
    runtime: options.runtime ?? "runc",
    start_entrypoint: options.startEntrypoint ?? false,
    timeout: options.timeout === undefined ? null : durationBody(options.timeout),
  };
  if (options.onIdle !== undefined) body.on_idle = options.onIdle;
  if (options.onTimeout !== undefined) body.on_timeout = options.onTimeout;
  if (options.snapshot !== undefined) body.snapshot = options.snapshot;
  if (id !== undefined) body.id = id;
  else if (options.id !== undefined) body.id = options.id;
  if (options.cpu !== undefined) body.cpu = options.cpu;
  if (options.memoryMb !== undefined) body.memory_mb = options.memoryMb;
  if (options.diskMb !== undefined) body.disk_mb = options.diskMb;
  if (options.pidsLimit !== undefined) body.pids_limit = options.pidsLimit;
  if (options.sleepAfter !== undefined) {
    body.sleep_after = typeof options.sleepAfter === "number" ? `${options.sleepAfter / 1000}s` : options.sleepAfter;
  }
  if (options.secrets) body.secrets = options.secrets;
  if (options.egressSecrets) body.egress_secrets = options.egressSecrets;
  return body;
}

function toPort(p: ExposedPortInfo): ExposedPort {
  return { port: p.port, name: p.name ?? null, url: p.url };
}

export class Sandbox {
  readonly id: string;
  readonly client: HutchClient;
  readonly files: Files;
  private readonly path: string;
  private readonly code: CodeInterpreter;
  private cachedInfo: SandboxInfo | undefined;
  // getSandbox() hands out a sandbox at once (as Cloudflare's does); every call waits for its
  // get-or-create first.
  private pending: Promise<void> | undefined;

  constructor(id: string, client: HutchClient, info?: SandboxInfo) {
    this.id = id;
    this.client = client;
    this.cachedInfo = info;
    this.path = `/v1/sandboxes/${seg(id)}`;
    this.files = new Files(client, this.path);
    this.code = new CodeInterpreter(client, this.path);
  }

  /** Create a new sandbox and wait until it runs. */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const client = HutchClient.from(options);
    const info = await client.request<SandboxInfo>("POST", "/v1/sandboxes", { json: createBody(options) });
    return new Sandbox(info.id, client, info);
  }

  /** The sandbox with this id, created with these options if it does not exist yet. */
  static async getOrCreate(id: string, options: SandboxOptions = {}): Promise<Sandbox> {
    const client = HutchClient.from(options);
    const info = await client.request<SandboxInfo>("PUT", `/v1/sandboxes/${seg(id)}`, { json: createBody(options, id) });
    return new Sandbox(info.id, client, info);
  }

  /** An existing sandbox; throws SandboxNotFoundError when there is none with this id. */
  static async connect(id: string, options: ConnectionOptions = {}): Promise<Sandbox> {
    const client = HutchClient.from(options);
    const info = await client.request<SandboxInfo>("GET", `/v1/sandboxes/${seg(id)}`);
    return new Sandbox(info.id, client, info);
  }

  /** Sandboxes on the server, optionally only those with all of these labels. */
  static async list(options: ConnectionOptions & { labels?: Record<string, string> } = {}): Promise<Sandbox[]> {
    const client = HutchClient.from(options);
    const query = Object.entries(options.labels ?? {}).map(([k, v]) => ["label", `${k}=${v}`] as [string, string]);
    const body = await client.request<SandboxList>("GET", "/v1/sandboxes", { query });
    return body.sandboxes.map((info) => new Sandbox(info.id, client, info));
  }

  /** @internal for getSandbox */
  static lazy(id: string, options: SandboxOptions): Sandbox {
    const client = HutchClient.from(options);
    const sandbox = new Sandbox(id, client);
    sandbox.pending = (async () => {
      sandbox.cachedInfo = await client.request<SandboxInfo>("PUT", sandbox.path, { json: createBody(options, id) });
    })();
    sandbox.pending.catch(() => undefined); // surfaced by the first call that awaits it
    return sandbox;
  }

  private async ready(): Promise<void> {
    if (this.pending) await this.pending;
  }

  toString(): string {
    return `Sandbox(${this.id})`;
  }

  // ---- lifecycle

  /** Its current state and settings: `status` ("running", "paused", "stopped", ...),
   * `statusReason`, `expiresAt`, and the server's fields as they are. */
  async info(): Promise<SandboxState> {
    await this.ready();
    this.cachedInfo = await this.client.request<SandboxInfo>("GET", this.path);
    return toState(this.cachedInfo);
  }

  /** What it uses now (CPU, memory, disk, network, tasks), with CPU and memory over the last
   * 15 minutes. */
  async metrics(): Promise<SandboxMetrics> {
    await this.ready();
    return toMetrics(await this.client.request<SandboxMetricsBody>("GET", `${this.path}/metrics`));
  }

  /** What happens to it, oldest first, then live until it is destroyed: created, started,
   * paused, resumed, stopped, oom_killed (with the process), error (with the reason),
   * destroyed. A dropped connection (a server restart too) resumes after the last event seen.
   *
   *     for await (const event of sandbox.events({ timeout: 60_000 })) console.log(event.type);
   */
  async *events(options: EventsOptions = {}): AsyncGenerator<SandboxEvent> {
    await this.ready();
    yield* followEvents(this.client, `${this.path}/events`, options);
  }

  /** Freeze every process (memory is kept); paused already: no-op. Any later call (or
   * resume()) wakes it, and an explicit pause stops its lifetime clock until then.
   * Stopped: SandboxStateConflictError (invalid_state). */
  async pause(): Promise<SandboxState> {
    return this.lifecycle("pause");
  }

  /** Run a paused or stopped sandbox again; running already: no-op. */
  async resume(): Promise<SandboxState> {
    return this.lifecycle("resume");
  }

  /** End every process, keeping its disk (not its memory: use pause() for that); start()
   * boots it again. */
  async stop(): Promise<SandboxState> {
    return this.lifecycle("stop");
  }

  /** Boot a stopped sandbox again on its disk; resumes a paused one. */
  async start(): Promise<SandboxState> {
    return this.lifecycle("start");
  }

  /** End its lifetime this long from now (onTimeout says how): milliseconds or a duration
   * string ("10m", "1h30m"); 0: no limit. A bad duration: InvalidRequestError. */
  async setTimeout(timeout: Duration): Promise<SandboxState> {
    await this.ready();
    const body: TimeoutUpdateBody = { timeout: durationBody(timeout) };
    this.cachedInfo = await this.client.request<SandboxInfo>("PUT", `${this.path}/timeout`, { json: body });
    return toState(this.cachedInfo);
  }

  /** Capture its filesystem and settings (copy-on-write; memory is not captured). Start
   * sandboxes from it with `Sandbox.create({ snapshot: snap.id })`. A taken name:
   * SnapshotExistsError. */
  async snapshot(name?: string): Promise<Snapshot> {
    await this.ready();
    const body: SnapshotCreateBody = name === undefined ? {} : { name };
    return toSnapshot(await this.client.request<SnapshotInfo>("POST", `${this.path}/snapshots`, { json: body }));
  }

  /** `count` (1-50) new running sandboxes whose filesystems start as this one's is now. */
  async fork(count = 1): Promise<Sandbox[]> {
    await this.ready();
    const body: ForkBody = { count };
    const list = await this.client.request<SandboxList>("POST", `${this.path}/fork`, { json: body });
    return list.sandboxes.map((info) => new Sandbox(info.id, this.client, info));
  }

  /** The server's snapshots (of one sandbox when `sandboxId` is given). */
  static async listSnapshots(options: ConnectionOptions & { sandboxId?: string } = {}): Promise<Snapshot[]> {
    const client = HutchClient.from(options);
    const query = options.sandboxId === undefined ? undefined : { sandbox_id: options.sandboxId };
    const body = await client.request<SnapshotList>("GET", "/v1/snapshots", query ? { query } : {});
    return body.snapshots.map(toSnapshot);
  }

  /** Delete a snapshot by id or name (sandboxes started from it are not affected). None:
   * SnapshotNotFoundError. */
  static async deleteSnapshot(snapshot: string, options: ConnectionOptions = {}): Promise<void> {
    const client = HutchClient.from(options);
    await client.request("DELETE", `/v1/snapshots/${seg(snapshot)}`);
  }

  /** Write its filesystem to an S3-compatible bucket (zstd, incremental against its previous
   * backup to the same place when the server still has that one's snapshot); not memory.
   * Unreachable bucket: BackupTargetUnreachableError, and nothing is written. */
  async backup(bucket: string, target: BackupTarget): Promise<Backup> {
    await this.ready();
    return toBackup(await this.client.request<BackupInfo>("POST", `${this.path}/backups`, { json: backupBody(bucket, target) }));
  }

  /** The backups this server made of it, oldest first. */
  async listBackups(): Promise<Backup[]> {
    await this.ready();
    return (await this.client.request<BackupList>("GET", `${this.path}/backups`)).backups.map(toBackup);
  }

  /** A new running sandbox from a backup made by this server or another (which must have the
   * backup's image). None in the bucket: BackupNotFoundError. */
  static async restore(
    backupId: string,
    bucket: string,
    options: BackupTarget & ConnectionOptions & { id?: string; labels?: Record<string, string>; timeout?: Duration },
  ): Promise<Sandbox> {
    const client = HutchClient.from(options);
    const sandbox: NonNullable<RestoreBody["sandbox"]> = {
      labels: options.labels ?? {},
      timeout: options.timeout === undefined ? null : durationBody(options.timeout),
    };
    if (options.id !== undefined) sandbox.id = options.id;
    const body: RestoreBody = { ...backupBody(bucket, options), backup_id: backupId, sandbox };
    const info = await client.request<SandboxInfo>("POST", "/v1/backups/restore", { json: body });
    return new Sandbox(info.id, client, info);
  }

  private async lifecycle(action: "pause" | "resume" | "stop" | "start"): Promise<SandboxState> {
    await this.ready();
    this.cachedInfo = await this.client.request<SandboxInfo>("POST", `${this.path}/${action}`);
    return toState(this.cachedInfo);
  }

  /** Destroy it: every process stops and its filesystem is deleted. */
  async destroy(): Promise<void> {
    await this.ready();
    await this.client.request("DELETE", this.path);
  }

  /** `await using sandbox = await Sandbox.create()` destroys it when the block ends. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.destroy();
    } catch (err) {
      if (!(err instanceof SandboxNotFoundError)) throw err; // destroyed in the block already
    }
  }

  // ---- commands

  /** Run a shell command (bash, or sh where the image has none) and wait for it. A failing
   * command is not an error: check `exitCode`/`success`. Past `timeout`: CommandTimeoutError. */
  async exec(command: string, options: ExecOptions = {}): Promise<ExecResult> {
    if (typeof command !== "string") throw new TypeError("exec() takes a shell command string; use run(program, args) for argv");
    return this.collect(command, { command }, options);
  }

  /** Run a program with arguments, no shell in between, and wait for it. */
  async run(program: string, args: string[] = [], options: ExecOptions = {}): Promise<ExecResult> {
    if (!Array.isArray(args)) throw new TypeError("args must be an array of strings, e.g. run('python', ['-c', 'print(1)'])");
    return this.collect([program, ...args].join(" "), { argv: [program, ...args] }, options);
  }

  /** A shell command's output as it arrives, then its end: `start`, `stdout`/`stderr` (with
   * byte offsets), `complete`. Breaking out of the loop kills the command. */
  execStream(command: string, options: ExecOptions = {}): AsyncGenerator<ExecEvent> {
    return this.stream(command, { command }, options);
  }

  /** As execStream, for a program and its arguments (no shell). */
  runStream(program: string, args: string[] = [], options: ExecOptions = {}): AsyncGenerator<ExecEvent> {
    return this.stream([program, ...args].join(" "), { argv: [program, ...args] }, options);
  }

  private async *stream(shown: string, target: { command: string } | { argv: string[] }, options: ExecOptions): AsyncGenerator<ExecEvent> {
    await this.ready();
    const response = await this.client.send("POST", `${this.path}/exec/stream`, {
      json: execRequestBody(target, options),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const decoder = new ExecStreamDecoder(shown);
    for await (const chunk of bodyChunks(response, "exec")) {
      // NB: read on to the end of the body after the result, so the connection is reused.
      for (const event of decoder.feed(chunk)) yield event;
    }
    decoder.close();
  }

  private async collect(shown: string, target: { command: string } | { argv: string[] }, options: ExecOptions): Promise<ExecResult> {
    const collector = new OutputCollector(shown, options.onOutput);
    try {
      for await (const event of this.stream(shown, target, options)) collector.add(event);
      const result = collector.result();
      if (result.timedOut) throw timeoutError(result, options.timeout);
      options.onComplete?.(result);
      return result;
    } catch (err) {
      options.onError?.(err as Error);
      throw err;
    }
  }

  // ---- background processes

  async startProcess(command: string | string[], options: ProcessOptions = {}): Promise<Process> {
    await this.ready();
    const info = await this.client.request<ProcessInfo>("POST", `${this.path}/processes`, { json: processStartBody(command, options) });
    return new Process(this.client, this.path, info);
  }

  async listProcesses(): Promise<Process[]> {
    await this.ready();
    const body = await this.client.request<ProcessList>("GET", `${this.path}/processes`);
    return body.processes.map((p) => new Process(this.client, this.path, p));
  }

  /** The process with this id, or null (Cloudflare's shape) when there is none. */
  async getProcess(processId: string): Promise<Process | null> {
    await this.ready();
    try {
      return new Process(this.client, this.path, await this.client.request<ProcessInfo>("GET", `${this.path}/processes/${seg(processId)}`));
    } catch (err) {
      if ((err as { code?: string }).code === "process_not_found") return null;
      throw err;
    }
  }

  async killProcess(processId: string, signal: string | number = "SIGTERM"): Promise<void> {
    await this.ready();
    await this.client.request("POST", `${this.path}/processes/${seg(processId)}/kill`, { json: { signal } });
  }

  /** Signal every running process; how many there were. */
  async killAllProcesses(signal: string | number = "SIGTERM"): Promise<number> {
    await this.ready();
    const body = await this.client.request<KillAllResult>("POST", `${this.path}/processes/kill`, { json: { signal } });
    return body.killed.length;
  }

  async getProcessLogs(processId: string): Promise<{ stdout: string; stderr: string; processId: string }> {
    const p = await this.processFor(processId);
    const { stdout, stderr } = await p.getLogs();
    return { stdout, stderr, processId };
  }

  /** A process's output from any byte offset, then live until it ends (an `exit` event last).
   * A dropped connection or a server restart is resumed from the last offset seen. */
  async *streamProcessLogs(processId: string, options: StreamLogsOptions = {}): AsyncGenerator<LogEvent | LogEndEvent> {
    const p = await this.processFor(processId);
    yield* p.streamLogs(options);
  }

  private async processFor(processId: string): Promise<Process> {
    await this.ready();
    const info = await this.client.request<ProcessInfo>("GET", `${this.path}/processes/${seg(processId)}`);
    return new Process(this.client, this.path, info);
  }

  // ---- sessions and environment

  async createSession(options: SessionOptions = {}): Promise<ExecutionSession> {
    await this.ready();
    const body: SessionCreateBody = { id: options.id ?? null, cwd: options.cwd ?? null, env: options.env ?? {} };
    const info = await this.client.request<SessionInfo>("POST", `${this.path}/sessions`, { json: body });
    return new ExecutionSession(this.client, this.path, info);
  }

  /** An existing session by id. */
  async getSession(sessionId: string): Promise<ExecutionSession> {
    await this.ready();
    const body = await this.client.request<SessionList>("GET", `${this.path}/sessions`);
    const info = body.sessions.find((s) => s.id === sessionId);
    if (!info) {
      throw new SessionNotFoundError(`no session ${JSON.stringify(sessionId)} in sandbox ${this.id}; create it with createSession({ id })`, { status: 404, code: "session_not_found" });
    }
    return new ExecutionSession(this.client, this.path, info);
  }

  async listSessions(): Promise<SessionInfo[]> {
    await this.ready();
    return (await this.client.request<SessionList>("GET", `${this.path}/sessions`)).sessions;
  }

  async deleteSession(sessionId: string): Promise<void> {
    await this.ready();
    await this.client.request("DELETE", `${this.path}/sessions/${seg(sessionId)}`);
  }

  /** Set (a null value: unset) environment variables for every later command, process and session. */
  async setEnvVars(env: Record<string, string | null>): Promise<void> {
    await this.ready();
    const body: EnvBody = { env };
    await this.client.request("PUT", `${this.path}/env`, { json: body });
  }

  // ---- files

  async writeFile(path: string, content: FileContent, options?: WriteFileOptions) {
    await this.ready();
    return this.files.write(path, content, options);
  }
  async readFile(path: string, options?: ReadFileOptions) {
    await this.ready();
    return this.files.read(path, options);
  }
  /** The file's exact bytes. */
  async readFileBytes(path: string): Promise<Uint8Array> {
    await this.ready();
    return this.files.readBytes(path);
  }
  /** The file as a web ReadableStream of bytes, streamed as it is read. */
  async readFileStream(path: string, options?: { offset?: number; length?: number; signal?: AbortSignal }): Promise<ReadableStream<Uint8Array>> {
    await this.ready();
    return this.files.readStream(path, options);
  }
  async mkdir(path: string, options?: { recursive?: boolean; mode?: number }) {
    await this.ready();
    return this.files.mkdir(path, options);
  }
  async deleteFile(path: string) {
    await this.ready();
    return this.files.deleteFile(path);
  }
  async remove(path: string, options?: { recursive?: boolean }) {
    await this.ready();
    return this.files.remove(path, options);
  }
  async renameFile(oldPath: string, newPath: string) {
    await this.ready();
    return this.files.move(oldPath, newPath);
  }
  async moveFile(sourcePath: string, destinationPath: string, options?: { overwrite?: boolean }) {
    await this.ready();
    return this.files.move(sourcePath, destinationPath, options);
  }
  async listFiles(path: string, options?: ListFilesOptions) {
    await this.ready();
    return this.files.list(path, options);
  }
  async exists(path: string) {
    await this.ready();
    return this.files.exists(path);
  }
  async stat(path: string): Promise<FileInfo> {
    await this.ready();
    return this.files.stat(path);
  }
  async *watch(path: string, options?: WatchOptions): AsyncGenerator<WatchEvent> {
    await this.ready();
    yield* this.files.watch(path, options);
  }
  async gitCheckout(repoUrl: string, options?: GitCheckoutOptions) {
    await this.ready();
    return this.files.gitCheckout(repoUrl, options);
  }

  // ---- ports and network

  /** Give a port a preview URL (the same one every time it is asked). */
  async exposePort(port: number, options: ExposePortOptions = {}): Promise<ExposedPort> {
    await this.ready();
    const body: PortExposeBody = { port, name: options.name ?? null };
    return toPort(await this.client.request<ExposedPortInfo>("POST", `${this.path}/ports`, { json: body }));
  }

  async getPreviewUrl(port: number): Promise<string> {
    return (await this.exposePort(port)).url;
  }

  async unexposePort(port: number): Promise<void> {
    await this.ready();
    await this.client.request("DELETE", `${this.path}/ports/${seg(port)}`);
  }

  async getExposedPorts(): Promise<ExposedPort[]> {
    await this.ready();
    return (await this.client.request<ExposedPortList>("GET", `${this.path}/ports`)).ports.map(toPort);
  }

  async getNetwork(): Promise<NetworkInfo> {
    await this.ready();
    return this.client.request<NetworkInfo>("GET", `${this.path}/network`);
  }

  async setNetwork(network: "none" | "internet", options: { allow?: string[]; deny?: string[] } = {}): Promise<NetworkInfo> {
    await this.ready();
    const body: NetworkUpdateBody = { network, network_allow: options.allow ?? [], network_deny: options.deny ?? [] };
    return this.client.request<NetworkInfo>("PUT", `${this.path}/network`, { json: body });
  }

  // ---- code interpreter

  async createCodeContext(options?: CreateContextOptions): Promise<CodeContext> {
    await this.ready();
    return this.code.createContext(options);
  }
  async listCodeContexts(): Promise<CodeContext[]> {
    await this.ready();
    return this.code.listContexts();
  }
  async deleteCodeContext(context: CodeContext | string): Promise<void> {
    await this.ready();
    return this.code.deleteContext(context);
  }
  async restartCodeContext(context: CodeContext | string): Promise<CodeContext> {
    await this.ready();
    return this.code.restartContext(context);
  }
  /** Run code in a context; results (text, html, png, svg, charts...) come typed, output and
   * results also live through the callbacks. */
  async runCode(code: string, options?: RunCodeOptions): Promise<Execution> {
    await this.ready();
    return this.code.run(code, options);
  }
  async *runCodeStream(code: string, options?: Omit<RunCodeOptions, "onStdout" | "onStderr" | "onResult" | "onError">): AsyncGenerator<CodeEvent> {
    await this.ready();
    yield* this.code.runStream(code, options);
  }

  // ---- terminals

  /** A shell on a pseudo-terminal, over a WebSocket. */
  async terminal(options: TerminalOptions = {}): Promise<Terminal> {
    await this.ready();
    return Terminal.open(this.client, this.path, options);
  }

  /** Reconnect to a terminal; output from `since` (default 0: all it still holds) is replayed. */
  async attachTerminal(terminalId: string, since = 0): Promise<Terminal> {
    await this.ready();
    return Terminal.attach(this.client, this.path, terminalId, since);
  }

  async listTerminals(): Promise<TerminalInfo[]> {
    await this.ready();
    return (await this.client.request<TerminalList>("GET", `${this.path}/terminals`)).terminals;
  }

  // ---- bucket mounts

  /** Mount an S3-compatible bucket at `mountPath` (credentials never enter the sandbox). */
  async mountBucket(bucket: string, mountPath: string, options: MountBucketOptions): Promise<BucketMountInfo> {
    await this.ready();
    const body: BucketMountCreateBody = {
      bucket,
      mount_path: mountPath,
      endpoint: options.endpoint,
      credentials: {
        accessKeyId: options.credentials.accessKeyId,
        secretAccessKey: options.credentials.secretAccessKey,
        sessionToken: options.credentials.sessionToken ?? null,
      },
      read_only: options.readOnly ?? false,
      prefix: options.prefix ?? null,
      region: options.region ?? null,
    };
    return this.client.request<BucketMountInfo>("POST", `${this.path}/mounts`, { json: body });
  }

  async unmountBucket(mountPath: string): Promise<void> {
    await this.ready();
    await this.client.request("DELETE", `${this.path}/mounts`, { query: { mount_path: mountPath } });
  }

  async listBucketMounts(): Promise<BucketMountInfo[]> {
    await this.ready();
    return (await this.client.request<BucketMountList>("GET", `${this.path}/mounts`)).mounts;
  }
}

/**
 * Cloudflare's entry point: a sandbox by id, handed out at once (no await) while it is got or
 * created in the background; the first call on it waits for that (and throws its error). The
 * first argument may be Cloudflare's Durable Object namespace, which Hutch does not need, so
 * `getSandbox(env.Sandbox, "my-id")` ports unchanged.
 */
export function getSandbox(id: string, options?: SandboxOptions): Sandbox;
export function getSandbox(namespace: unknown, id: string, options?: SandboxOptions): Sandbox;
export function getSandbox(a: unknown, b?: string | SandboxOptions, c?: SandboxOptions): Sandbox {
  if (typeof a === "string") return Sandbox.lazy(a, (b as SandboxOptions | undefined) ?? {});
  if (typeof b !== "string") throw new TypeError("getSandbox(namespace, id, options?) needs an id string");
  return Sandbox.lazy(b, c ?? {});
}
