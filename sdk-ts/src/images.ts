/** Images in the server's store: list, inspect, pull from a registry, import, tag, remove. */

import { type ConnectionOptions, HutchClient, seg } from "./client.js";
import type { ImageDetail, ImageInfo, ImageList, ImagePullBody, ImageTagBody } from "./types.js";

export interface PullImageOptions {
  name?: string;
  username?: string;
  password?: string;
  /** Plain HTTP (or TLS without verification), for local registries. */
  insecure?: boolean;
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
}
