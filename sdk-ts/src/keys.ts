/** The server's API keys: list, create (the secret is shown once), delete. */

import { type ConnectionOptions, HutchClient, seg } from "./client.js";
import type { KeyCreated, KeyInfo, KeyList } from "./types.js";

export interface ApiKey {
  /** e.g. "key-1a2b3c4d5e6f": what delete() takes. */
  id: string;
  name: string;
  /** The key's first characters (e.g. "hk_ab12"), to tell keys apart. */
  prefix: string;
  createdAt: Date;
  /** The secret itself: only in create()'s answer, never shown again. */
  key?: string;
}

function toKey(k: KeyInfo | KeyCreated): ApiKey {
  const out: ApiKey = { id: k.id, name: k.name, prefix: k.prefix, createdAt: new Date(k.created_at) };
  if ("key" in k) out.key = k.key;
  return out;
}

export class Keys {
  readonly client: HutchClient;

  constructor(options: ConnectionOptions = {}) {
    this.client = HutchClient.from(options);
  }

  /** The server's keys (without their secrets). */
  async list(): Promise<ApiKey[]> {
    return (await this.client.request<KeyList>("GET", "/v1/keys")).keys.map(toKey);
  }

  /** A new key; its `key` is the secret, shown this once. */
  async create(name: string): Promise<ApiKey> {
    return toKey(await this.client.request<KeyCreated>("POST", "/v1/keys", { json: { name } }));
  }

  /** Revoke a key by id; requests with it fail from now on. None: KeyNotFoundError. */
  async delete(keyId: string): Promise<void> {
    await this.client.request("DELETE", `/v1/keys/${seg(keyId)}`);
  }
}
