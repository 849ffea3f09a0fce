/** A build context as a tar (ustar, with PAX records for long names): what POST
 * /v1/images/build takes. Node only (it reads a directory), so node: modules are imported when
 * it runs, and the package still loads in browsers and Workers. */

const BLOCK = 512;
const encoder = new TextEncoder();

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function header(name: string, type: string, size: number, mode: number, mtime: number, linkname = ""): Uint8Array {
  const h = new Uint8Array(BLOCK);
  const put = (text: string, offset: number, width: number) => h.set(encoder.encode(text).subarray(0, width), offset);
  put(name, 0, 100);
  put(octal(mode & 0o7777, 8), 100, 8);
  put(octal(0, 8), 108, 8);
  put(octal(0, 8), 116, 8);
  put(octal(size, 12), 124, 12);
  put(octal(Math.floor(mtime), 12), 136, 12);
  put("        ", 148, 8);
  put(type, 156, 1);
  put(linkname, 157, 100);
  put("ustar\0" + "00", 257, 8);
  let sum = 0;
  for (const b of h) sum += b;
  put(octal(sum, 7) + " ", 148, 8);
  return h;
}

function padded(data: Uint8Array): Uint8Array[] {
  const rest = (BLOCK - (data.length % BLOCK)) % BLOCK;
  return rest ? [data, new Uint8Array(rest)] : [data];
}

/** A PAX record for a name or link target that does not fit ustar's 100 bytes. */
function pax(key: string, value: string): Uint8Array[] {
  const body = ` ${key}=${value}\n`;
  let len = encoder.encode(body).length + 1;
  while (encoder.encode(`${len}${body}`).length !== len) len += 1;
  const record = encoder.encode(`${len}${body}`);
  return [header("././@PaxHeader", "x", record.length, 0o644, 0), ...padded(record)];
}

function entry(name: string, type: string, data: Uint8Array, mode: number, mtime: number, linkname = ""): Uint8Array[] {
  const out: Uint8Array[] = [];
  if (encoder.encode(name).length > 100) out.push(...pax("path", name));
  if (encoder.encode(linkname).length > 100) out.push(...pax("linkpath", linkname));
  out.push(header(name, type, data.length, mode, mtime, linkname), ...padded(data));
  return out;
}

// The few node:fs and node:path calls used, typed here: the package is built without Node's
// types so that it stays a browser/Workers package.
interface Stats {
  mode: number;
  mtimeMs: number;
  isSymbolicLink(): boolean;
  isDirectory(): boolean;
  isFile(): boolean;
}
interface NodeFs {
  stat(p: string): Promise<Stats>;
  lstat(p: string): Promise<Stats>;
  readdir(p: string): Promise<string[]>;
  readFile(p: string): Promise<Uint8Array>;
  readlink(p: string): Promise<string>;
}
interface NodePath {
  sep: string;
  resolve(...p: string[]): string;
  join(...p: string[]): string;
  relative(from: string, to: string): string;
  isAbsolute(p: string): boolean;
}

async function nodeModule<T>(name: string): Promise<T> {
  return (await import(name)) as T;
}

/** `context` as a tar (symlinks kept as links, never followed; sockets and devices left out),
 * and the Dockerfile's path in it: added under a new name when it lies outside `context`. */
export async function contextTar(context: string, dockerfile?: string): Promise<{ tar: Uint8Array; dockerfile: string }> {
  const fs = await nodeModule<NodeFs>("node:fs/promises");
  const path = await nodeModule<NodePath>("node:path");
  const root = path.resolve(context);
  if (!(await fs.stat(root).catch(() => null))?.isDirectory()) {
    throw new Error(`build context ${context} is not a directory`);
  }
  const parts: Uint8Array[] = [];
  const walk = async (dir: string, prefix: string): Promise<void> => {
    for (const name of (await fs.readdir(dir)).sort()) {
      const full = path.join(dir, name);
      const rel = prefix + name;
      const st = await fs.lstat(full);
      const mtime = st.mtimeMs / 1000;
      if (st.isSymbolicLink()) parts.push(...entry(rel, "2", new Uint8Array(), st.mode, mtime, await fs.readlink(full)));
      else if (st.isDirectory()) {
        parts.push(...entry(rel + "/", "5", new Uint8Array(), st.mode, mtime));
        await walk(full, rel + "/");
      } else if (st.isFile()) parts.push(...entry(rel, "0", new Uint8Array(await fs.readFile(full)), st.mode, mtime));
    }
  };
  await walk(root, "");
  const file = path.resolve(dockerfile ?? path.join(root, "Dockerfile"));
  let inTar = path.relative(root, file).split(path.sep).join("/");
  if (inTar.startsWith("../") || path.isAbsolute(inTar)) {
    inTar = `.hutch-dockerfile-${Math.random().toString(16).slice(2, 14)}`;
    parts.push(...entry(inTar, "0", new Uint8Array(await fs.readFile(file)), 0o644, Date.now() / 1000));
  }
  parts.push(new Uint8Array(BLOCK * 2)); // the end-of-archive marker
  const tar = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    tar.set(p, at);
    at += p.length;
  }
  return { tar, dockerfile: inTar };
}
