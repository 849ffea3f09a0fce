/**
 * Hutch's binary frames (src/hutch/_wire/frames.py), decoded sans-I/O: feed bytes in any
 * chunking, get whole frames back. Streamed responses (exec, logs, code runs, watch) use them:
 *
 *     kind u8 | channel u8 | stream u32 | offset u64 | length u32 | payload
 *
 * Output bytes travel as they are (never base64 or JSON), each DATA frame saying where in its
 * channel it starts, so a reader that reconnects can ask for exactly what it has not seen.
 */

export const FRAME_HEADER_SIZE = 18;
export const MAX_PAYLOAD = 4 * 1024 * 1024;

export const Kind = {
  OPEN: 1,
  DATA: 2,
  EOF: 3,
  RESULT: 4,
  CANCEL: 5,
  EVENT: 6,
} as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

export const Channel = { STDIN: 0, STDOUT: 1, STDERR: 2 } as const;

export interface Frame {
  kind: Kind;
  channel: number;
  stream: number;
  offset: number;
  payload: Uint8Array;
}

export class FrameError extends Error {
  override name = "FrameError";
}

const utf8 = new TextDecoder();

/** The payload of an OPEN, EVENT or RESULT frame: a JSON object. */
export function frameJson(frame: Frame): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(frame.payload));
  } catch {
    throw new FrameError(`the server sent a ${frame.kind} frame that is not JSON`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new FrameError(`the server sent a ${frame.kind} frame that is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

export class FrameDecoder {
  // NB: output runs at hundreds of MB/s through here. A frame (up to 4 MiB) usually arrives in
  // many smaller chunks: they are kept as a list and joined once, when the frame is complete,
  // so each byte is copied at most once (joining on every chunk made it quadratic).
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private needed = FRAME_HEADER_SIZE;

  /** Bytes received that do not yet make a whole frame. */
  get buffered(): number {
    return this.pendingBytes;
  }

  feed(chunk: Uint8Array): Frame[] {
    let data: Uint8Array;
    if (this.pendingBytes === 0) {
      data = chunk;
    } else {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      if (this.pendingBytes < this.needed) return [];
      data = new Uint8Array(this.pendingBytes);
      let at = 0;
      for (const part of this.pending) {
        data.set(part, at);
        at += part.length;
      }
    }
    this.pending = [];
    this.pendingBytes = 0;
    const frames: Frame[] = [];
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    let pos = 0;
    this.needed = FRAME_HEADER_SIZE;
    while (data.length - pos >= FRAME_HEADER_SIZE) {
      const kind = view.getUint8(pos);
      const length = view.getUint32(pos + 14);
      if (length > MAX_PAYLOAD) {
        throw new FrameError(`frame payload of ${length} bytes exceeds ${MAX_PAYLOAD}`);
      }
      if (data.length - pos - FRAME_HEADER_SIZE < length) {
        this.needed = FRAME_HEADER_SIZE + length;
        break;
      }
      if (kind < Kind.OPEN || kind > Kind.EVENT) throw new FrameError(`unknown frame kind ${kind}`);
      const start = pos + FRAME_HEADER_SIZE;
      frames.push({
        kind: kind as Kind,
        channel: view.getUint8(pos + 1),
        stream: view.getUint32(pos + 2),
        // Offsets are u64 on the wire; 2^53 bytes of output is out of reach, so a number holds it.
        offset: Number(view.getBigUint64(pos + 6)),
        payload: data.subarray(start, start + length),
      });
      pos = start + length;
    }
    if (pos < data.length) {
      // Keep the tail by reference: fetch hands each chunk over in a fresh buffer.
      const rest = data.subarray(pos);
      this.pending.push(rest);
      this.pendingBytes = rest.length;
    }
    return frames;
  }
}

/** One frame as bytes (tests and fakes speak the real protocol with it). */
export function encodeFrame(
  kind: Kind,
  stream: number,
  payload: Uint8Array = new Uint8Array(0),
  channel = 0,
  offset = 0,
): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_SIZE + payload.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, kind);
  view.setUint8(1, channel);
  view.setUint32(2, stream);
  view.setBigUint64(6, BigInt(offset));
  view.setUint32(14, payload.length);
  out.set(payload, FRAME_HEADER_SIZE);
  return out;
}
