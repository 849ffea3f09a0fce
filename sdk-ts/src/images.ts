/** Images in the server's store: list, inspect, pull from a registry, import, tag, remove. */

import { type ConnectionOptions, HutchClient, bodyChunks, seg } from "./client.js";
import { HutchConnectionError, ImageBuildFailedError, apiError } from "./errors.js";
import { contextTar } from "./tar.js";
import type { ImageDetail, ImageInfo, ImageList, ImagePullBody, ImageTagBody } from "./types.js";

export interface PullImageOptions {
  name?: string;
  username?: string;
  password?: string;
  /** Plain HTTP (or TLS without verification), for local registries. */
  insecure?: boolean;
}

export interface BuildImageOptions {
  /** The Dockerfile: a path on this machine (default `<context>/Dockerfile`) for a directory
   * context, or its path inside the archive (default "Dockerfile") for a tar context. */
  dockerfile?: string;
  /** Each line of the build's output as it arrives. */
  onProgress?: (line: string) => void;
  signal?: AbortSignal;
}

export class Images {
  readonly client: HutchClient;

  constructor(options: ConnectionOptions = {}) {
    this.client = HutchClient.from(options);
  }

  async list(): Promise<ImageInfo[]> {
    return (await this.client.request<ImageList>("GET", "/v1/images")).images;
  }

  async get(name: string): Promise<ImageDetail> {
    return this.client.request<ImageDetail>("GET", `/v1/images/${seg(name)}`);
  }

  async pull(ref: string, options: PullImageOptions = {}): Promise<ImageDetail> {
    const body: ImagePullBody = {
      ref,
      name: options.name ?? null,
      username: options.username ?? null,
      password: options.password ?? null,
      insecure: options.insecure ?? false,
    };
    return this.client.request<ImageDetail>("POST", "/v1/images/pull", { json: body });
  }

  /** Upload a `docker save` tarball or an OCI archive (bytes or a stream); `name` defaults to its tag. */
  async import(archive: Uint8Array | Blob | ReadableStream<Uint8Array>, options: { name?: string } = {}): Promise<ImageDetail> {
    return this.client.request<ImageDetail>("POST", "/v1/images/import", {
      query: { name: options.name },
      body: archive,
      headers: { "content-type": "application/octet-stream" },
    });
  }

  async tag(name: string, newName: string): Promise<ImageDetail> {
    const body: ImageTagBody = { name: newName };
    return this.client.request<ImageDetail>("POST", `/v1/images/${seg(name)}/tags`, { json: body });
  }

  async remove(name: string): Promise<void> {
    await this.client.request("DELETE", `/v1/images/${seg(name)}`);
  }

  /** Build an image from a Dockerfile on the server and store it as `name`. `context` is a
   * directory on this machine (Node: sent as a tar, symlinks not followed) or a tar archive
   * (optionally gzipped) as bytes or a stream. A failing step: ImageBuildFailedError, whose
   * `outputTail` holds the build's last lines. */
  async build(
    name: string,
    context: string | Uint8Array | Blob | ReadableStream<Uint8Array>,
    options: BuildImageOptions = {},
  ): Promise<ImageDetail> {
    let body: Uint8Array | Blob | ReadableStream<Uint8Array>;
    let dockerfile = options.dockerfile ?? "Dockerfile";
    if (typeof context === "string") {
      const tar = await contextTar(context, options.dockerfile);
      body = tar.tar;
      dockerfile = tar.dockerfile;
    } else {
      body = context;
    }
    const response = await this.client.send("POST", "/v1/images/build", {
      query: { name, dockerfile },
      body,
      headers: { "content-type": "application/x-tar" },
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const decoder = new TextDecoder();
    let buffered = "";
    let image: ImageDetail | undefined;
    const handle = (line: string) => {
      if (!line.trim()) return;
      const event = JSON.parse(line) as {
        type?: string;
        line?: string;
        image?: ImageDetail;
        error?: { code?: string; message?: string; status?: number; output_tail?: string[] };
      };
      if (event.type === "progress") options.onProgress?.(String(event.line ?? ""));
      else if (event.type === "image" && event.image) image = event.image;
      else if (event.type === "error") {
        const e = event.error ?? {};
        const err = apiError(String(e.code), String(e.message), Number(e.status ?? 422));
        if (err instanceof ImageBuildFailedError) err.outputTail = (e.output_tail ?? []).map(String);
        throw err;
      }
    };
    for await (const chunk of bodyChunks(response, "image build")) {
      buffered += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        handle(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    }
    handle(buffered + decoder.decode());
    if (!image) throw new HutchConnectionError(`the build of ${name} ended without a result; build again`);
    return image;
  }
}
