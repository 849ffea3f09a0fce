/**
 * Hutch's TypeScript SDK: isolated Linux sandboxes on your own server, with the method names
 * and shapes of Cloudflare's `@cloudflare/sandbox`.
 *
 *     import { Sandbox } from "@hutch/sandbox";
 *     const sandbox = await Sandbox.create();
 *     const result = await sandbox.run("python", ["-c", 'print("Hello from sandbox")']);
 */

export { HutchClient, type ConnectionOptions, type WebSocketConstructor } from "./client.js";
export * from "./errors.js";
export type {
  ExecCompleteEvent,
  ExecEvent,
  ExecOptions,
  ExecOutputEvent,
  ExecResult,
  ExecStartEvent,
  OutputStream,
} from "./exec.js";
export {
  Process,
  type LogEndEvent,
  type LogEvent,
  type ProcessOptions,
  type ProcessStatus,
  type StreamLogsOptions,
  type WaitForLogResult,
  type WaitForPortOptions,
} from "./processes.js";
export { ExecutionSession, type SessionExecOptions, type SessionOptions } from "./sessions.js";
export type {
  FileContent,
  FileInfo,
  GitCheckoutOptions,
  ListFilesOptions,
  ReadFileOptions,
  ReadFileResult,
  WatchEvent,
  WatchOptions,
  WriteFileOptions,
  WriteFileResult,
} from "./files.js";
export {
  CHART_MIME,
  Execution,
  Result,
  type ChartData,
  type CodeContext,
  type CodeEvent,
  type CreateContextOptions,
  type ExecutionError,
  type Language,
  type OutputMessage,
  type RunCodeOptions,
} from "./code.js";
export { Terminal, type TerminalOptions } from "./terminal.js";
export { EventStreamDecoder, type EventsOptions, type SandboxEvent, type SandboxEventType } from "./events.js";
export { Images, type BuildImageOptions, type PullImageOptions } from "./images.js";
export { Keys, type ApiKey } from "./keys.js";
export type {
  Backup,
  BackupTarget,
  Duration,
  MetricsPoint,
  SandboxMetrics,
  SandboxState,
  Snapshot,
} from "./lifecycle.js";
export {
  Sandbox,
  getSandbox,
  type ExposePortOptions,
  type ExposedPort,
  type MountBucketOptions,
  type SandboxOptions,
} from "./sandbox.js";
export { parseSSEStream, streamFile } from "./compat.js";
export type * from "./types.js";
