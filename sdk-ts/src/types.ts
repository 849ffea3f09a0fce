/**
 * The wire types, named: every request body and response is the server's own schema, generated
 * from its /openapi.json into api.gen.ts (scripts/gen-types.sh; `--check` fails when stale).
 */

import type { components } from "./api.gen.js";

type Schemas = components["schemas"];

export type SandboxCreateBody = Schemas["SandboxCreate"];
export type SandboxInfo = Schemas["SandboxInfo"];
export type SandboxList = Schemas["SandboxList"];
export type ExecRequestBody = Schemas["ExecRequest"];
export type ProcessStartBody = Schemas["ProcessStart"];
export type ProcessInfo = Schemas["ProcessInfo"];
export type ProcessList = Schemas["ProcessList"];
export type ProcessLogsBody = Schemas["ProcessLogs"];
export type KillAllResult = Schemas["KillAllResult"];
export type WaitForPortBody = Schemas["WaitForPort"];
export type PortWaitResult = Schemas["PortWaitResult"];
export type SessionCreateBody = Schemas["SessionCreate"];
export type SessionInfo = Schemas["SessionInfo"];
export type SessionList = Schemas["SessionList"];
export type SessionExecBody = Schemas["SessionExec"];
export type FileEntry = Schemas["FileEntry"];
export type FileList = Schemas["FileList"];
export type Written = Schemas["Written"];
export type PathResult = Schemas["PathResult"];
export type Exists = Schemas["Exists"];
export type MkdirBody = Schemas["MkdirRequest"];
export type MoveBody = Schemas["MoveRequest"];
export type WatchBody = Schemas["WatchRequest"];
export type GitCheckoutBody = Schemas["GitCheckoutRequest"];
export type GitCheckoutResult = Schemas["GitCheckoutResult"];
export type PortExposeBody = Schemas["PortExpose"];
export type ExposedPortInfo = Schemas["ExposedPort"];
export type ExposedPortList = Schemas["ExposedPortList"];
export type NetworkInfo = Schemas["NetworkInfo"];
export type NetworkUpdateBody = Schemas["NetworkUpdate"];
export type CodeContextCreateBody = Schemas["CodeContextCreate"];
export type CodeContextInfo = Schemas["CodeContextInfo"];
export type CodeContextList = Schemas["CodeContextList"];
export type CodeRunBody = Schemas["CodeRunRequest"];
export type TerminalCreateBody = Schemas["TerminalCreate"];
export type TerminalInfo = Schemas["TerminalInfo"];
export type TerminalList = Schemas["TerminalList"];
export type BucketMountCreateBody = Schemas["BucketMountCreate"];
export type BucketMountInfo = Schemas["BucketMountInfo"];
export type BucketMountList = Schemas["BucketMountList"];
export type EnvBody = Schemas["EnvBody"];
export type SignalBody = Schemas["SignalBody"];
export type ImageInfo = Schemas["ImageInfo"];
export type ImageDetail = Schemas["ImageDetail"];
export type ImageList = Schemas["ImageList"];
export type ImagePullBody = Schemas["ImagePull"];
export type ImageTagBody = Schemas["ImageTag"];
export type KeyCreated = Schemas["KeyCreated"];
export type KeyInfo = Schemas["KeyInfo"];
export type KeyList = Schemas["KeyList"];
export type ErrorBody = Schemas["ErrorBody"];
export type SandboxMetricsBody = Schemas["SandboxMetrics"];
export type SnapshotInfo = Schemas["SnapshotInfo"];
export type SnapshotList = Schemas["SnapshotList"];
export type SnapshotCreateBody = Schemas["SnapshotCreate"];
export type BackupInfo = Schemas["BackupInfo"];
export type BackupList = Schemas["BackupList"];
export type BackupCreateBody = Schemas["BackupCreate"];
export type RestoreBody = Schemas["RestoreRequest"];
export type ForkBody = Schemas["ForkRequest"];
export type TimeoutUpdateBody = Schemas["TimeoutUpdate"];
