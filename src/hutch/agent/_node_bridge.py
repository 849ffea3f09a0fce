# ruff: noqa: E501 -- the JavaScript below is not Python; its lines are as long as they read best
"""The JavaScript/TypeScript interpreter's bridge: a node script, run with ``node -e``.

It speaks the same JSON lines as ``_kernel_bridge.py``. Code runs with ``vm`` in the bridge's
own global context, so variables, functions and ``require``d modules persist between runs (a
context is one node process; contexts never share one). TypeScript goes through Babel's
TypeScript preset (in the default image under /usr/share/nodejs as npm's dependencies): types
are stripped, never checked, so a type error does not stop the code.

(Kept in a .py module: the agent's code bundle ships Python sources only.)
"""

from __future__ import annotations

NODE_BRIDGE = r"""
'use strict';
const vm = require('vm');
const util = require('util');
const path = require('path');
const { Writable } = require('stream');
const { createRequire } = require('module');
const lastArg = process.argv[process.argv.length - 1] || '';
const options = lastArg.startsWith('{') ? JSON.parse(lastArg) : {};
const language = options.language || 'javascript';
const realWrite = process.stdout.write.bind(process.stdout);
function emit(m) { realWrite(JSON.stringify(m) + '\n'); }
let current = null;  // the id of the run in progress; late output goes to the last one
function sink(name) {
  return new Writable({ write(chunk, enc, cb) {
    emit({ id: current, type: name, text: chunk.toString() }); cb(); } });
}
const userConsole = new console.Console({ stdout: sink('stdout'), stderr: sink('stderr') });
globalThis.console = userConsole;
process.stdout.write = (chunk, ...rest) => { emit({ id: current, type: 'stdout', text: String(chunk) }); return true; };
process.stderr.write = (chunk, ...rest) => { emit({ id: current, type: 'stderr', text: String(chunk) }); return true; };
const cwd = options.cwd || process.cwd();
try { process.chdir(cwd); } catch (e) {}
globalThis.require = createRequire(path.join(process.cwd(), '__hutch__.js'));
globalThis.module = { exports: {} };
globalThis.exports = globalThis.module.exports;
globalThis.__filename = path.join(process.cwd(), '__hutch__.js');
globalThis.__dirname = process.cwd();

// `import()` in a cell: a script run by `vm` cannot import (node 18 needs a flag for it), so
// cells call the bridge's own `import()`, which can.
globalThis.__hutch_import = (specifier) => import(specifier);

let babel = null;
// Where Debian's node packages live (npm's dependencies bring Babel), then global npm installs.
const BABEL_PATHS = [path.join(process.cwd(), 'node_modules'), '/usr/local/lib/node_modules',
                     '/usr/lib/node_modules', '/usr/share/nodejs', '/usr/lib/nodejs'];
function transpile(code) {
  if (babel === null) {
    try { babel = require(require.resolve('@babel/core', { paths: BABEL_PATHS })); }
    catch (e) { throw new Error('TypeScript needs @babel/core and @babel/preset-typescript ' +
                                '(npm install -g @babel/core @babel/preset-typescript): ' + e.message); }
  }
  const out = babel.transformSync(code, {
    filename: 'cell.ts', babelrc: false, configFile: false, sourceType: 'script',
    presets: [[require.resolve('@babel/preset-typescript', { paths: BABEL_PATHS }), { onlyRemoveTypeImports: true }]],
    parserOpts: { allowAwaitOutsideFunction: true }, retainLines: true, compact: false,
  });
  return out.code.replace(/^"use strict";\n?/, '');
}

const KEYWORD = /^(const|let|var|if|for|while|do|switch|try|function|async\s+function|class|return|throw|import|export|break|continue|\}|\/\/)/;
function wrapAwait(code) {
  // Top-level await: run the cell in an async function. Top-level declarations become
  // globals so that they outlive the cell, and the last expression becomes its value.
  let body = code.replace(/^(const|let|var)\s+([A-Za-z_$][\w$]*)\s*=/gm, 'globalThis.$2 =')
                 .replace(/^(async\s+)?function\s+([A-Za-z_$][\w$]*)/gm, 'globalThis.$2 = $1function $2');
  const lines = body.replace(/\s+$/, '').split('\n');
  const last = lines[lines.length - 1];
  const trimmed = (last || '').replace(/;\s*$/, '');
  const cut = trimmed.lastIndexOf(';');
  const head = cut >= 0 ? trimmed.slice(0, cut + 1) + ' ' : '';
  const expr = cut >= 0 ? trimmed.slice(cut + 1).trim() : trimmed;
  if (expr && !KEYWORD.test(expr) && !/^\s/.test(last)) {
    const withReturn = lines.slice(0, -1).concat([head + 'return (' + expr + ');']).join('\n');
    try { new vm.Script('(async () => {\n' + withReturn + '\n})()'); body = withReturn; } catch (e) {}
  }
  return '(async () => {\n' + body + '\n})()';
}

function dedent(code) {
  // A cell indented as a whole (a snippet inside a Python string, as E2B's tests send)
  // runs as if it started at column 0.
  const lines = code.split('\n');
  let indent = null;
  for (const line of lines) {
    if (!line.trim()) continue;
    const n = line.length - line.trimStart().length;
    indent = indent === null ? n : Math.min(indent, n);
  }
  return indent ? lines.map((l) => l.slice(Math.min(indent, l.length - l.trimStart().length))).join('\n') : code;
}

// Static ES module imports in a cell (a script cannot hold them) become dynamic ones, whose
// bindings are plain variables of the cell: `import { a as b } from 'x'` ->
// `var __hutch_m0 = await import('x'); var b = __hutch_m0.a;` (top-level await then runs it).
const IMPORT = /^import\s+(?:(type\s+)?([\w$*{][^'"]*?)\s+from\s+)?(['"])([^'"]+)\3\s*;?[ \t]*$/gm;
let importCount = 0;
function esmImports(code) {
  return code.replace(IMPORT, (all, typeOnly, clause, q, spec) => {
    if (typeOnly) return '';
    const m = `__hutch_m${importCount++}`;
    const out = [`var ${m} = await __hutch_import(${JSON.stringify(spec)});`];
    if (!clause) return out[0];
    let rest = clause.trim();
    const named = rest.match(/\{([^}]*)\}/);
    if (named) rest = rest.replace(named[0], '');
    for (const part of rest.split(',').map((p) => p.trim()).filter(Boolean)) {
      const ns = part.match(/^\*\s+as\s+([\w$]+)$/);
      if (ns) out.push(`var ${ns[1]} = ${m};`);
      else out.push(`var ${part} = ('default' in ${m}) ? ${m}.default : ${m};`);
    }
    if (named) {
      for (const item of named[1].split(',').map((p) => p.trim()).filter(Boolean)) {
        if (/^type\s/.test(item)) continue;
        const [name, alias] = item.split(/\s+as\s+/).map((p) => p.trim());
        out.push(`var ${alias || name} = ${m}[${JSON.stringify(name)}];`);
      }
    }
    return out.join('\n');
  });
}

function mime(value) {
  const data = { 'text/plain': util.inspect(value, { depth: 6, colors: false }) };
  if (value !== null && typeof value === 'object') {
    const proto = Object.getPrototypeOf(value);
    if (Array.isArray(value) || proto === Object.prototype || proto === null) {
      try { data['application/json'] = JSON.parse(JSON.stringify(value)); } catch (e) {}
    }
  }
  return data;
}

function report(id, e) {
  const err = (e instanceof Error) ? e : { name: 'Error', message: util.inspect(e), stack: '' };
  emit({ id, type: 'error', name: err.name || 'Error', value: String(err.message),
         traceback: String(err.stack || `${err.name}: ${err.message}`).split('\n') });
}

let executionCount = 0;
async function run(id, code, timeout, env) {
  current = id;
  executionCount += 1;
  let status = 'ok';
  // Per-run variables (E2B's run_code(envs=...)): set for this run, then put back.
  const saved = {};
  for (const [k, v] of Object.entries(env || {})) {
    saved[k] = Object.prototype.hasOwnProperty.call(process.env, k) ? process.env[k] : undefined;
    process.env[k] = v;
  }
  try {
    code = esmImports(dedent(code)).replace(/(^|[^.\w$])import\s*\(/g, '$1__hutch_import(');
    if (language === 'typescript') code = transpile(code);
    // Column-0 const/let become var, so that re-running a cell does not fail on redeclaring.
    code = code.replace(/^(const|let)\s+(?=[A-Za-z_$[{])/gm, 'var ');
    let script;
    let isAsync = false;
    const scriptOptions = { filename: 'cell.js' };
    try { script = new vm.Script(code, scriptOptions); }
    catch (e) {
      if (!(e instanceof SyntaxError) || !/await/.test(code)) throw e;
      script = new vm.Script(wrapAwait(code), scriptOptions);
      isAsync = true;
    }
    const ms = timeout ? Math.max(1, Math.round(timeout * 1000)) : undefined;
    let value = script.runInThisContext(ms ? { timeout: ms, breakOnSigint: true } : {});
    if (isAsync || (value && typeof value.then === 'function' && isAsync)) {
      let timer;
      const limit = new Promise((_, reject) => {
        if (ms) timer = setTimeout(() => reject(Object.assign(new Error(`the run took longer than ${timeout}s`), { name: 'TimeoutError', hutchTimeout: true })), ms);
      });
      try { value = await Promise.race([value, limit]); } finally { clearTimeout(timer); }
    }
    if (value !== undefined) emit({ id, type: 'result', data: mime(value), is_main_result: true });
  } catch (e) {
    const timedOut = (e && e.hutchTimeout) || (e && e.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT');
    status = timedOut ? 'timeout' : 'error';
    if (timedOut && e instanceof Error) e.name = 'TimeoutError';
    report(id, e);
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
  }
  emit({ id, type: 'done', status, execution_count: executionCount });
}

process.on('SIGINT', () => {});  // the agent's interrupt: breaks a running script only
process.on('uncaughtException', (e) => report(current, e));
process.on('unhandledRejection', (e) => report(current, e));
if (language === 'typescript') {
  try { transpile('let x: number = 1'); } catch (e) { emit({ type: 'failed', message: e.message }); process.exit(0); }
}
let queue = Promise.resolve();
let buffer = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffer += chunk;
  let nl;
  while ((nl = buffer.indexOf('\n')) >= 0) {
    const line = buffer.slice(0, nl);
    buffer = buffer.slice(nl + 1);
    if (!line.trim()) continue;
    const req = JSON.parse(line);
    if (req.setup) {
      try { if (req.setup.cwd) process.chdir(req.setup.cwd); Object.assign(process.env, req.setup.env || {});
            emit({ type: 'ready' }); } catch (e) { emit({ type: 'failed', message: String(e) }); }
      continue;
    }
    queue = queue.then(() => run(req.id, req.code, req.timeout, req.env));
  }
});
process.stdin.on('end', () => queue.then(() => process.exit(0)));
emit({ type: 'ready' });
"""
