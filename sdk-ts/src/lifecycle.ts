/** The shapes of a sandbox's lifecycle (state, snapshots, backups, metrics) in camelCase, and
 * the conversions from the server's snake_case bodies. The calls themselves are on Sandbox. */

import type {
  BackupCreateBody,
  BackupInfo,
  SandboxInfo,
  SandboxMetricsBody,
  SnapshotInfo,
} from "./types.js";

/** A duration: milliseconds when a number (as every time in this SDK), or the server's
 * duration string ("90s", "10m", "1h30m"), passed on unchanged for the server to check. */
export type Duration = number | string;

/** A duration as the server takes it: seconds, or the string as given. */
export function durationBody(value: Duration): number | string {
  if (typeof value === "number") return value / 1000;
  return value;
}

function date(value: string | null | undefined): Date | null {
  return value ? new Date(value) : null;
}

/** What info(), pause(), resume(), stop(), start() and setTimeout() return: the server's
 * SandboxInfo as it is, plus the lifecycle fields in camelCase. */
export type SandboxState = SandboxInfo & {
  /** Why it is in its status (e.g. "idle for 10m"), or null. */
  statusReason: string | null;
  /** When its lifetime ends (null: it lives until destroyed). */
  expiresAt: Date | null;
  createdAt: Date | null;
  /** "pause" or "stop": what idleness (sleepAfter) does to it. */
  onIdle: string | null;
  /** "destroy", "stop" or "pause": what the end of its lifetime does to it. */
  onTimeout: string | null;
  keepAlive: boolean;
};

export function toState(info: SandboxInfo): SandboxState {
  return {
    ...info,
    statusReason: info.status_reason ?? null,
    expiresAt: date(info.expires_at),
    createdAt: date(info.created_at),
    onIdle: info.on_idle ?? null,
    onTimeout: info.on_timeout ?? null,
    keepAlive: info.keep_alive ?? false,
  };
}

/** A copy-on-write capture of a sandbox's filesystem and settings (not its memory). */
export interface Snapshot {
  /** e.g. "snap-1a2b3c4d5e6f"; create({ snapshot: id }) starts sandboxes from it. */
  id: string;
  name: string | null;
  /** The sandbox it was taken of (which may be gone since). */
  sandboxId: string;
  /** The image under its disk. */
  image: string;
  createdAt: Date | null;
}

export function toSnapshot(s: SnapshotInfo): Snapshot {
  return { id: s.id, name: s.name ?? null, sandboxId: s.sandbox_id, image: s.image, createdAt: date(s.created_at) };
}

/** A sandbox's filesystem written to an S3-compatible bucket. */
export interface Backup {
  /** e.g. "bk-1a2b3c4d5e6f". */
  id: string;
  sandboxId: string;
  bucket: string;
  endpoint: string;
  prefix: string | null;
  /** The backup it is incremental against (null: a full backup). */
  parentId: string | null;
  createdAt: Date | null;
}

export function toBackup(b: BackupInfo): Backup {
  return {
    id: b.id,
    sandboxId: b.sandbox_id,
    bucket: b.bucket,
    endpoint: b.endpoint,
    prefix: b.prefix ?? null,
    parentId: b.parent_id ?? null,
    createdAt: date(b.created_at),
  };
}

/** Where a backup goes (or a restore reads from): the bucket's endpoint and credentials. */
export interface BackupTarget {
  endpoint: string;
  credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** A key prefix for the backup's objects. */
  prefix?: string;
  region?: string;
}

export function backupBody(bucket: string, target: BackupTarget): BackupCreateBody {
  return {
    bucket,
    endpoint: target.endpoint,
    credentials: {
      accessKeyId: target.credentials.accessKeyId,
      secretAccessKey: target.credentials.secretAccessKey,
      sessionToken: target.credentials.sessionToken ?? null,
    },
    prefix: target.prefix ?? null,
    region: target.region ?? null,
  };
}

export interface MetricsPoint {
  /** Unix time of the sample, in seconds. */
  timestamp: number;
  cpuPercent: number;
  memoryUsedBytes: number;
}

/** What a sandbox uses now, with its CPU and memory over the last 15 minutes. */
export interface SandboxMetrics {
  /** Unix time of the reading, in seconds. */
  timestamp: number;
  /** Share of its CPU limit in use, 0-100. */
  cpuPercent: number;
  /** Its CPU limit, in CPUs. */
  cpuCount: number;
  /** CPU time its processes have used since it started. */
  cpuSeconds: number;
  /** Memory charged to it (page cache included, as its limit counts). */
  memoryUsedBytes: number;
  memoryLimitBytes: number;
  /** Its writable layer's size, or null if it cannot be read. */
  diskUsedBytes: number | null;
  diskLimitBytes: number | null;
  netRxBytes: number;
  netTxBytes: number;
  /** Its processes and threads now. */
  pids: number;
  pidsLimit: number;
  /** CPU and memory every 15 seconds over the last 15 minutes, oldest first. */
  history: MetricsPoint[];
}

export function toMetrics(m: SandboxMetricsBody): SandboxMetrics {
  return {
    timestamp: m.timestamp,
    cpuPercent: m.cpu_percent,
    cpuCount: m.cpu_count,
    cpuSeconds: m.cpu_seconds,
    memoryUsedBytes: m.memory_used_bytes,
    memoryLimitBytes: m.memory_limit_bytes,
    diskUsedBytes: m.disk_used_bytes ?? null,
    diskLimitBytes: m.disk_limit_bytes ?? null,
    netRxBytes: m.net_rx_bytes,
    netTxBytes: m.net_tx_bytes,
    pids: m.pids,
    pidsLimit: m.pids_limit,
    history: m.history.map((p) => ({ timestamp: p.timestamp, cpuPercent: p.cpu_percent, memoryUsedBytes: p.memory_used_bytes })),
  };
}
