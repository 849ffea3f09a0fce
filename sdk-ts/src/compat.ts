/** Cloudflare's stream helpers, for code ported as is. Hutch's streams are already typed
 * AsyncIterables (binary frames underneath, not SSE), so these only adapt. */

/** Cloudflare: `parseSSEStream<ExecEvent>(await sandbox.execStream(cmd))`. Here the stream is
 * already the events; this passes them through. */
export async function* parseSSEStream<T>(stream: AsyncIterable<T> | Promise<AsyncIterable<T>>): AsyncGenerator<T> {
  yield* await stream;
}

/** Cloudflare: `streamFile(await sandbox.readFileStream(path))` yields the file's chunks. */
export async function* streamFile(stream: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } finally {
    reader.releaseLock();
  }
}
