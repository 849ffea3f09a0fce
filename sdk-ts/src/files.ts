/** Files in a sandbox: text, bytes and streams both ways, listing, watching, git. */

import { type Body, type HutchClient, bodyChunks } from "./client.js";
import { HutchConnectionError, apiError } from "./errors.js";
import { fromBase64, joinBytes } from "./exec.js";
import { FrameDecoder, Kind, frameJson } from "./frames.js";
import type {
  Exists,
  FileEntry,
  FileList,
  GitCheckoutBody,
  GitCheckoutResult,
  MkdirBody,
  MoveBody,
  PathResult,
  WatchBody,
  Written,
} from "./types.js";

export type FileContent = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array>;

export interface WriteFileOptions {
  /** How a string is meant: "utf-8" (default) or "base64" (decoded before writing). */
  encoding?: "utf-8" | "utf8" | "base64";
  /** Permission bits, e.g. 0o755 (default: an existing file's, else 0o644). */
  mode?: number;
  /** Create missing parent directories (default true). */
  parents?: boolean;
}

export interface WriteFileResult {
  success: true;
  path: string;
  size: number;
}

export interface ReadFileOptions {
  /** "utf-8" (default) gives text; "base64" gives the bytes base64-encoded. */
  encoding?: "utf-8" | "utf8" | "base64";
}

export interface ReadFileResult {
  success: true;
  path: string;
  content: string;
  encoding: "utf-8" | "base64";
  size: number;
}

/** A directory entry (Cloudflare's `FileInfo` names, plus Hutch's `target` for symlinks). */
export interface FileInfo {
  name: string;
  absolutePath: string;
  relativePath: string;
  type: FileEntry["type"];
  size: number;
  /** ISO 8601. */
  modifiedAt: string;
  /** Permission bits as `rwxr-xr-x`. */
  mode: string;
  permissions: { readable: boolean; writable: boolean; executable: boolean };
  /** A symlink's target. */
  target: string | null;
  /** The owning user's and group's names (the number as text when the image has none). */
  owner: string;
  group: string;
}

export interface ListFilesOptions {
  recursive?: boolean;
  includeHidden?: boolean;
  limit?: number;
}

export interface WatchOptions {
  recursive?: boolean;
  /** Globs matched against the name or the path relative to the watched one. */
  include?: string[];
  exclude?: string[];
  /** Abort to stop watching. */
  signal?: AbortSignal;
}

export interface WatchEvent {
  type: "create" | "modify" | "delete" | "move" | "attrib" | "overflow";
  path: string;
  isDirectory: boolean;
  oldPath?: string;
}

export interface GitCheckoutOptions {
  branch?: string;
  targetDir?: string;
  depth?: number;
}

function modeString(bits: number): string {
  const chars = "rwxrwxrwx";
  let out = "";
  for (let i = 0; i < 9; i++) out += bits & (1 << (8 - i)) ? chars[i] : "-";
  return out;
}

export function fileInfo(entry: FileEntry): FileInfo {
  return {
    name: entry.name,
    absolutePath: entry.absolute_path,
    relativePath: entry.path,
    type: entry.type,
    size: entry.size,
    modifiedAt: new Date(entry.mtime * 1000).toISOString(),
    owner: entry.owner,
    group: entry.group,
    mode: modeString(entry.mode),
    // NB: the owner's bits: commands run as the image's user, which owns what it makes.
    permissions: {
      readable: (entry.mode & 0o400) !== 0,
      writable: (entry.mode & 0o200) !== 0,
      executable: (entry.mode & 0o100) !== 0,
    },
    target: entry.target ?? null,
  };
}

const encoder = new TextEncoder();

export class Files {
  constructor(
    private readonly client: HutchClient,
    private readonly sandboxPath: string,
  ) {}

  async write(path: string, content: FileContent, options: WriteFileOptions = {}): Promise<WriteFileResult> {
    let body: Body;
    if (typeof content === "string") {
      body = options.encoding === "base64" ? fromBase64(content) : encoder.encode(content);
    } else {
      body = content;
    }
    const written = await this.client.request<Written>("PUT", `${this.sandboxPath}/files/content`, {
      query: { path, parents: options.parents ?? true, mode: options.mode },
      body,
      headers: { "content-type": "application/octet-stream" },
    });
    return { success: true, path: written.path, size: written.size };
  }

  /** The file's bytes as a web ReadableStream, streamed from the sandbox as they are read. */
  async readStream(path: string, options: { offset?: number; length?: number; signal?: AbortSignal } = {}): Promise<ReadableStream<Uint8Array>> {
    const response = await this.client.send("GET", `${this.sandboxPath}/files/content`, {
      query: { path, offset: options.offset ?? 0, length: options.length },
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return response.body ?? new ReadableStream({ start: (c) => c.close() });
  }

  async readBytes(path: string): Promise<Uint8Array> {
    const response = await this.client.send("GET", `${this.sandboxPath}/files/content`, { query: { path } });
    const parts: Uint8Array[] = [];
    for await (const chunk of bodyChunks(response, "file")) parts.push(chunk);
    return parts.length === 0 ? new Uint8Array(0) : joinBytes(parts);
  }

  async read(path: string, options: ReadFileOptions = {}): Promise<ReadFileResult> {
    const bytes = await this.readBytes(path);
    const base64 = options.encoding === "base64";
    let content: string;
    if (base64) {
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      content = btoa(binary);
    } else {
      content = new TextDecoder().decode(bytes);
    }
    return { success: true, path, content, encoding: base64 ? "base64" : "utf-8", size: bytes.length };
  }

  async mkdir(path: string, options: { recursive?: boolean; mode?: number } = {}): Promise<{ success: true; path: string }> {
    const body: MkdirBody = { path, recursive: options.recursive ?? false, mode: options.mode ?? null };
    const result = await this.client.request<PathResult>("POST", `${this.sandboxPath}/files/mkdir`, { json: body });
    return { success: true, path: result.path };
  }

  /** Delete a file (not a directory: see `remove`). */
  async deleteFile(path: string): Promise<{ success: true; path: string }> {
    await this.client.request("DELETE", `${this.sandboxPath}/files`, { query: { path, file_only: true } });
    return { success: true, path };
  }

  /** Delete a file or directory (a non-empty directory only with `recursive`). */
  async remove(path: string, options: { recursive?: boolean } = {}): Promise<{ success: true; path: string }> {
    await this.client.request("DELETE", `${this.sandboxPath}/files`, { query: { path, recursive: options.recursive ?? false } });
    return { success: true, path };
  }

  async move(source: string, destination: string, options: { overwrite?: boolean } = {}): Promise<{ success: true; path: string }> {
    const body: MoveBody = { source, destination, overwrite: options.overwrite ?? true };
    const result = await this.client.request<PathResult>("POST", `${this.sandboxPath}/files/move`, { json: body });
    return { success: true, path: result.path };
  }

  async list(path: string, options: ListFilesOptions = {}): Promise<{ success: true; path: string; files: FileInfo[]; count: number; truncated: boolean }> {
    const body = await this.client.request<FileList>("GET", `${this.sandboxPath}/files/list`, {
      query: { path, recursive: options.recursive ?? false, include_hidden: options.includeHidden ?? false, limit: options.limit },
    });
    const files = body.entries.map(fileInfo);
    return { success: true, path, files, count: files.length, truncated: body.truncated ?? false };
  }

  async exists(path: string): Promise<{ success: true; path: string; exists: boolean }> {
    const body = await this.client.request<Exists>("GET", `${this.sandboxPath}/files/exists`, { query: { path } });
    return { success: true, path, exists: body.exists };
  }

  async stat(path: string): Promise<FileInfo> {
    return fileInfo(await this.client.request<FileEntry>("GET", `${this.sandboxPath}/files/stat`, { query: { path } }));
  }

  /** Changes under `path` as they happen, until `signal` aborts (or the directory goes). */
  async *watch(path: string, options: WatchOptions = {}): AsyncGenerator<WatchEvent> {
    const body: WatchBody = {
      path,
      recursive: options.recursive ?? true,
      include: options.include ?? [],
      exclude: options.exclude ?? [],
    };
    let response: Response;
    try {
      response = await this.client.send("POST", `${this.sandboxPath}/files/watch`, {
        json: body,
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (err) {
      if (options.signal?.aborted) return;
      throw err;
    }
    const frames = new FrameDecoder();
    try {
      for await (const chunk of bodyChunks(response, "watch")) {
        for (const frame of frames.feed(chunk)) {
          if (frame.kind === Kind.EVENT) {
            const ev = frameJson(frame);
            if (ev["event"] === "watching") continue;
            const out: WatchEvent = {
              type: ev["event"] as WatchEvent["type"],
              path: String(ev["path"] ?? ""),
              isDirectory: ev["is_directory"] === true,
            };
            if (typeof ev["old_path"] === "string") out.oldPath = ev["old_path"];
            yield out;
          } else if (frame.kind === Kind.RESULT) {
            const result = frameJson(frame);
            const error = result["error"] as { code?: unknown; message?: unknown } | undefined;
            if (error && typeof error === "object") throw apiError(String(error.code), String(error.message), 500);
            return;
          }
        }
      }
    } catch (err) {
      if (options.signal?.aborted && err instanceof HutchConnectionError) return;
      throw err;
    }
  }

  async gitCheckout(repoUrl: string, options: GitCheckoutOptions = {}): Promise<{ success: true; repoUrl: string; branch: string | null; targetDir: string; commit: string | null }> {
    const body: GitCheckoutBody = {
      url: repoUrl,
      branch: options.branch ?? null,
      target_dir: options.targetDir ?? null,
      depth: options.depth ?? null,
    };
    const result = await this.client.request<GitCheckoutResult>("POST", `${this.sandboxPath}/git/checkout`, { json: body });
    return { success: true, repoUrl: result.url, branch: result.branch ?? null, targetDir: result.path, commit: result.commit ?? null };
  }
}
