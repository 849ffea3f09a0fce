// The Hutch console: plain DOM code over the Hutch HTTP API. The API key lives in
// sessionStorage (this tab only) and goes out as "Authorization: Bearer" on fetches and as
// a WebSocket subprotocol (browsers cannot set headers on a WebSocket); never in a URL.
"use strict";

const KEY = "hutch.apiKey";
const $ = (id) => document.getElementById(id);
const state = { selected: null, tab: "terminal", term: null, ws: null, fit: null, logs: null, logsFor: null, events: null, statusHeardAt: undefined };

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
  }
}

async function api(method, path, { json, body, raw, signal } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body, signal });
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (response.status === 401 && path !== "/v1/sandboxes?probe") logout("Your key was refused; log in again.");
    throw new ApiError(response.status, data);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

// A 404 with code "not_found" means the route itself is missing (an older server).
const routeMissing = (e) => e instanceof ApiError && e.status === 404 && e.code === "not_found";
const sbPath = (id) => `/v1/sandboxes/${encodeURIComponent(id)}`;
const showError = (e) => { $("app-error").textContent = e ? String(e.message || e) : ""; };

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

// -- login --------------------------------------------------------------------------------

async function login(key) {
  sessionStorage.setItem(KEY, key);
  try {
    await api("GET", "/v1/sandboxes?probe");
  } catch (e) {
    sessionStorage.removeItem(KEY);
    $("login-error").textContent = e.status === 401 ? "That key is not valid." : String(e.message);
    return;
  }
  start();
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  closeTerminal();
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

// -- sandboxes ----------------------------------------------------------------------------

async function refresh() {
  let list;
  const asked = performance.now();
  try {
    list = (await api("GET", "/v1/sandboxes")).sandboxes;
  } catch (e) {
    return showError(e);
  }
  const rows = $("sandbox-rows");
  rows.replaceChildren();
  for (const sb of list) {
    const destroy = el("button", { textContent: "Destroy", className: "destroy" });
    destroy.addEventListener("click", async (event) => {
      event.stopPropagation();
      if (destroy.textContent !== "Really destroy?") { destroy.textContent = "Really destroy?"; return; }
      destroy.disabled = true;
      try {
        await api("DELETE", sbPath(sb.id));
        if (state.selected === sb.id) select(null);
      } catch (e) { showError(e); }
      refresh();
    });
    // Pause/Stop a running sandbox, Resume a sleeping one (any request would wake it too).
    const steps = sb.status === "running" ? ["pause", "stop"]
      : (sb.status === "paused" || sb.status === "stopped") ? ["resume"] : [];
    const lifecycle = steps.map((step) => {
      const button = el("button", { textContent: step[0].toUpperCase() + step.slice(1), className: step });
      button.addEventListener("click", async (event) => {
        event.stopPropagation();
        button.disabled = true;
        try { await api("POST", `${sbPath(sb.id)}/${step}`); } catch (e) { showError(e); }
        refresh();
      });
      return button;
    });
    const row = el("tr", { className: sb.id === state.selected ? "selected" : "", tabIndex: 0,
                           title: `Open ${sb.id}` },
      el("td", {}, el("code", { textContent: sb.id })),
      el("td", { className: `status-${sb.status}`, textContent: sb.status, title: sb.status_reason || "" }),
      el("td", { textContent: sb.image }),
      el("td", { className: "network", textContent: sb.network }),
      el("td", { className: "labels" }, ...labelChips(sb.labels)),
      el("td", { textContent: sb.cpu }),
      el("td", { textContent: `${sb.memory_mb} MiB` }),
      el("td", { textContent: `${sb.disk_mb} MiB` }),
      el("td", { textContent: new Date(sb.created_at).toLocaleString() }),
      expiryCell(sb.expires_at),
      el("td", {}, ...lifecycle, destroy));
    row.dataset.id = sb.id;
    row.addEventListener("click", () => select(sb.id));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") select(sb.id); });
    rows.append(row);
    if (sb.id === state.selected) showSandboxState(sb, asked);
  }
  $("rows-hint").hidden = list.length === 0;
  showHost(list);
}

function labelChips(labels) {
  const entries = Object.entries(labels || {}).sort(([a], [b]) => a.localeCompare(b));
  return entries.length ? entries.map(([k, v]) => el("code", { textContent: `${k}=${v}` })) : ["-"];
}

// "in 9 min" next to the time: a sandbox with a lifetime disappears on its own.
function expiresText(expiresAt) {
  if (!expiresAt) return "never";
  const minutes = Math.round((new Date(expiresAt) - Date.now()) / 60000);
  const when = minutes <= 0 ? "now" : minutes < 120 ? `in ${minutes} min` : `in ${Math.round(minutes / 60)} h`;
  return `${new Date(expiresAt).toLocaleString()} (${when})`;
}

function expiryCell(expiresAt) {
  const soon = expiresAt && new Date(expiresAt) - Date.now() < 10 * 60000;
  return el("td", { className: soon ? "expires expiring" : "expires", textContent: expiresText(expiresAt) });
}

// The sandbox page's header: its state as the list last said. Another piece of work streams a
// sandbox's events (paused, resumed, OOM, ...); it calls hutchConsole.onSandboxEvent for each.
// `asked`: when the answer `sb` was asked for (performance.now()); an event heard since is newer
// than it, and its status stays (a list asked before a pause, answered after its event, showed
// "running" again).
function showSandboxState(sb, asked = performance.now()) {
  if (!(state.statusHeardAt > asked)) {
    $("detail-status").textContent = sb.status;
    $("detail-status").className = `status-${sb.status}`;
  }
  const facts = [
    ["Image", sb.image], ["Network", sb.network], ["Runtime", sb.runtime],
    ["Limits", `${sb.cpu} CPU, ${sb.memory_mb} MiB memory, ${sb.disk_mb} MiB disk`],
    ["Created", new Date(sb.created_at).toLocaleString()], ["Expires", expiresText(sb.expires_at)],
  ];
  $("detail-state").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", { textContent: k }), el("dd", { textContent: v }))));
}

function onSandboxEvent(event) {
  if (!event || event.sandbox_id !== state.selected) return;
  const list = $("detail-events");
  list.hidden = false;
  const when = event.at ? new Date(event.at).toLocaleTimeString() : new Date().toLocaleTimeString();
  list.append(el("li", { textContent: `${when} ${event.type}${event.message ? ": " + event.message : ""}` }));
  if (event.status) {
    state.statusHeardAt = performance.now();
    $("detail-status").textContent = event.status;
    $("detail-status").className = `status-${event.status}`;
  }
}
window.hutchConsole = { onSandboxEvent };

// The selected sandbox's events, live: GET .../events is Server-Sent Events, read with fetch
// (EventSource cannot send the key's header). A dropped stream resumes after the last id.
const STATUS_AFTER = { created: "running", started: "running", paused: "paused", resumed: "running",
                       stopped: "stopped", error: "error", destroyed: "destroyed" };

function stopEvents() {
  if (state.events) state.events.abort();
  state.events = null;
}

async function followEvents(sandbox) {
  stopEvents();
  const controller = new AbortController();
  state.events = controller;
  let after = 0;
  let attempts = 0;
  while (!controller.signal.aborted && state.selected === sandbox) {
    try {
      const response = await api("GET", `${sbPath(sandbox)}/events?after=${after}`, { raw: true, signal: controller.signal });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        attempts = 0;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data) continue;
          const event = JSON.parse(data);
          after = event.seq;
          const d = event.data || {};
          const message = d.reason || (d.command ? `${d.command} (host pid ${d.host_pid})` : "");
          onSandboxEvent({ sandbox_id: sandbox, type: event.type, at: event.at, message, status: STATUS_AFTER[event.type] });
          if (event.type === "destroyed") return;
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
      if (e instanceof ApiError && (e.status === 404 || routeMissing(e))) return;
    }
    attempts += 1;
    await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 200 * attempts)));
  }
}

async function create(event) {
  event.preventDefault();
  showError(null);
  $("create").disabled = true;
  try {
    const sb = await api("POST", "/v1/sandboxes", { json: {
      image: $("create-image").value,
      cpu: Number($("create-cpu").value),
      memory_mb: Number($("create-memory").value),
    } });
    await refresh();
    select(sb.id);
  } catch (e) {
    showError(e);
  } finally {
    $("create").disabled = false;
  }
}

async function loadImages() {
  try {
    const images = (await api("GET", "/v1/images")).images;
    if (images.length) {
      $("create-image").replaceChildren(...images.map((i) => el("option", { textContent: i.name })));
      if (images.some((i) => i.name === "default")) $("create-image").value = "default";
    }
  } catch (e) { /* keep "default" */ }
}

function select(id) {
  closeTerminal();
  stopLogs();
  stopEvents();
  state.selected = id;
  for (const row of $("sandbox-rows").children) row.classList.toggle("selected", row.dataset.id === id);
  $("detail").hidden = !id;
  if (!id) return;
  $("detail-id").textContent = id;
  $("detail-events").replaceChildren();
  $("detail-events").hidden = true;
  $("detail-state").replaceChildren();
  state.statusHeardAt = undefined;
  const asked = performance.now();
  api("GET", sbPath(id)).then((sb) => showSandboxState(sb, asked), () => {});
  followEvents(id);
  for (const tab of ["files", "processes", "ports"]) probeTab(tab);
  showTab(state.tab);
}

const TAB_PROBES = { files: "/files/list?path=/", processes: "/processes", ports: "/ports" };

async function probeTab(tab) {
  const button = document.querySelector(`#tabs [data-tab=${tab}]`);
  try {
    await api("GET", sbPath(state.selected) + TAB_PROBES[tab]);
    button.hidden = false;
  } catch (e) {
    button.hidden = routeMissing(e);  // this server has no such API: hide the panel
    if (button.hidden && state.tab === tab) showTab("terminal");
  }
}

function showTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === tab);
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== `panel-${tab}`;
  if (tab === "terminal") openTerminal();
  if (tab === "files") listFiles();
  if (tab === "processes") listProcesses();
  if (tab === "ports") listPorts();
  if (tab === "usage") showUsage(state.selected);
}

// -- terminal -----------------------------------------------------------------------------

function closeTerminal() {
  if (state.ws) { state.ws.onclose = null; state.ws.close(); }
  if (state.term) state.term.dispose();
  state.ws = state.term = state.fit = null;
}

async function openTerminal() {
  if (state.term || !state.selected) return;
  const sandbox = state.selected;
  const status = $("terminal-status");
  if (typeof Terminal === "undefined") {
    status.textContent = "xterm.js is missing: run scripts/install on the server.";
    return;
  }
  const term = new Terminal({ cursorBlink: true, convertEol: false, fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($("terminal"));
  fit.fit();
  state.term = term;
  state.fit = fit;
  // Reattach to this tab's terminal for the sandbox if it is still there (output replays).
  const remembered = `hutch.terminal.${sandbox}`;
  let id = sessionStorage.getItem(remembered);
  if (id) {
    try { await api("GET", `${sbPath(sandbox)}/terminals/${id}`); } catch (e) { id = null; }
  }
  if (!id) {
    try {
      id = (await api("POST", `${sbPath(sandbox)}/terminals`, { json: { cols: term.cols, rows: term.rows } })).id;
    } catch (e) {
      status.textContent = `Could not open a terminal: ${e.message}`;
      return;
    }
    sessionStorage.setItem(remembered, id);
  }
  if (state.term !== term) return;  // the user moved on meanwhile
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${sbPath(sandbox)}/terminals/${id}/ws`,
    ["hutch.terminal.v1", `hutch.key.${sessionStorage.getItem(KEY)}`]);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  const encoder = new TextEncoder();
  ws.onopen = () => {
    status.textContent = `Terminal ${id}`;
    ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
    term.focus();
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") return term.write(new Uint8Array(event.data));
    const message = JSON.parse(event.data);
    if (message.type === "exit") {
      status.textContent = `The shell exited with code ${message.exit_code}.`;
      sessionStorage.removeItem(remembered);
    } else if (message.type === "error") {
      status.textContent = message.message;
    }
  };
  ws.onclose = (event) => {
    if (event.code === 4401) return logout("Your key was refused; log in again.");
    if (event.code === 4404) sessionStorage.removeItem(remembered);
    if (event.code !== 1000) status.textContent = `Disconnected (${event.code} ${event.reason}).`;
  };
  term.onData((data) => ws.readyState === WebSocket.OPEN && ws.send(encoder.encode(data)));
  term.onResize(({ cols, rows }) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ type: "resize", cols, rows })));
}

// -- files --------------------------------------------------------------------------------

async function listFiles(path) {
  path = path || $("files-path").value || "/";
  $("files-path").value = path;
  const rows = $("files-rows");
  let entries;
  try {
    entries = (await api("GET", `${sbPath(state.selected)}/files/list?path=${encodeURIComponent(path)}&include_hidden=true`)).entries;
  } catch (e) {
    rows.replaceChildren(el("tr", {}, el("td", { className: "error", textContent: e.message })));
    return;
  }
  const parent = path.replace(/\/[^/]*\/?$/, "") || "/";
  const up = el("a", { href: "#", textContent: ".." });
  up.addEventListener("click", (e) => { e.preventDefault(); listFiles(parent); });
  rows.replaceChildren(el("tr", {}, el("td", {}, up), el("td"), el("td")));
  entries.sort((a, b) => (a.type !== "directory") - (b.type !== "directory") || a.name.localeCompare(b.name));
  for (const entry of entries) {
    const full = entry.absolute_path;
    const link = el("a", { href: "#", textContent: entry.name + (entry.type === "directory" ? "/" : "") });
    link.addEventListener("click", async (e) => {
      e.preventDefault();
      if (entry.type === "directory") return listFiles(full);
      let blob;
      try {
        blob = await (await api("GET", `${sbPath(state.selected)}/files/content?path=${encodeURIComponent(full)}`, { raw: true })).blob();
      } catch (e) { return showError(e); }
      const url = URL.createObjectURL(blob);
      el("a", { href: url, download: entry.name }).click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
    rows.append(el("tr", {}, el("td", {}, link), el("td", { textContent: entry.type }),
      el("td", { textContent: entry.type === "file" ? entry.size : "" })));
  }
}

async function upload() {
  const file = $("files-upload").files[0];
  if (!file) return;
  const dir = $("files-path").value.replace(/\/$/, "");
  try {
    await api("PUT", `${sbPath(state.selected)}/files/content?path=${encodeURIComponent(`${dir}/${file.name}`)}`, { body: file });
  } catch (e) { showError(e); }
  $("files-upload").value = "";
  listFiles(dir || "/");
}

// -- processes ----------------------------------------------------------------------------

async function listProcesses() {
  const sandbox = state.selected;
  const rows = $("process-rows");
  let processes;
  try {
    processes = (await api("GET", `${sbPath(sandbox)}/processes`)).processes;
  } catch (e) {
    rows.replaceChildren(el("tr", {}, el("td", { className: "error", textContent: e.message })));
    return;
  }
  if (sandbox !== state.selected) return;
  processes.sort((a, b) => b.started_at - a.started_at);
  rows.replaceChildren(...processes.map((p) => {
    const running = p.status === "running" || p.status === "starting";
    const kill = el("button", { textContent: "Kill", className: "kill", hidden: !running });
    kill.addEventListener("click", async (event) => {
      event.stopPropagation();
      kill.disabled = true;
      try {
        await api("POST", `${sbPath(sandbox)}/processes/${encodeURIComponent(p.id)}/kill`, { json: { signal: "SIGTERM" } });
      } catch (e) { showError(e); }
      listProcesses();
    });
    const status = p.exit_code === null ? p.status : `${p.status} (${p.exit_code})`;
    const row = el("tr", { className: p.id === state.logsFor ? "selected" : "" },
      el("td", {}, el("code", { textContent: p.id })), el("td", { textContent: p.pid }),
      el("td", { className: `status-${p.status}`, textContent: p.signal ? `${status} signal ${p.signal}` : status }),
      el("td", { textContent: p.command || p.argv.join(" ") }),
      el("td", {}, kill));
    row.dataset.id = p.id;
    row.addEventListener("click", () => followLogs(p));
    return row;
  }));
}

function stopLogs() {
  if (state.logs) state.logs.abort();
  state.logs = null;
  state.logsFor = null;
}

// Follow a process's output live. The stream is Hutch's binary frames (hutch._wire.frames):
// an 18-byte big-endian header (kind u8, channel u8, stream u32, offset u64, length u32),
// then the payload. EVENT (6) and RESULT (4) payloads are JSON; DATA (2) is raw output on
// channel 1 (stdout) or 2 (stderr) at a byte offset. A stream that drops before its RESULT
// is resumed from the offsets seen: nothing is lost or shown twice.
const FRAME = { DATA: 2, EOF: 3, RESULT: 4, EVENT: 6, HEADER: 18 };
// A chatty process can keep 64 MiB of output: show its last TAIL bytes per stream, and keep
// at most KEEP characters on the page (the oldest go first).
const TAIL = 256 * 1024;
const KEEP = 2 * 1024 * 1024;

async function followLogs(process) {
  const processId = process.id;
  stopLogs();
  const sandbox = state.selected;
  const out = $("process-logs");
  out.replaceChildren();
  const controller = new AbortController();
  state.logs = controller;
  state.logsFor = processId;
  for (const row of $("process-rows").children) row.classList.toggle("selected", row.dataset.id === processId);
  const decoders = { 1: new TextDecoder(), 2: new TextDecoder() };
  const offsets = {
    1: Math.max(process.stdout_start, process.stdout_bytes - TAIL),
    2: Math.max(process.stderr_start, process.stderr_bytes - TAIL),
  };
  let shown = 0;
  const note = (text) => out.append(el("span", { className: "note", textContent: `${text}\n` }));
  if (offsets[1] > 0 || offsets[2] > 0) note("[earlier output is not shown]");
  const write = (channel, bytes) => {
    const text = decoders[channel].decode(bytes, { stream: true });
    if (!text) return;
    shown += text.length;
    while (shown > KEEP && out.firstChild && out.firstChild !== out.lastChild) {
      shown -= out.firstChild.chars || out.firstChild.textContent.length;
      out.firstChild.remove();
    }
    const last = out.lastChild;
    if (last && last.dataset.channel === String(channel) && last.chars < 65536) {
      last.append(text);
      last.chars += text.length;
    } else {
      const span = el("span", { className: channel === 2 ? "stderr" : "stdout" }, text);
      span.dataset.channel = channel;
      span.chars = text.length;
      out.append(span);
    }
  };
  let attempts = 0;
  while (!controller.signal.aborted) {
    let ended = false;
    try {
      const query = `stdout_offset=${offsets[1]}&stderr_offset=${offsets[2]}&follow=true`;
      const response = await api("GET", `${sbPath(sandbox)}/processes/${encodeURIComponent(processId)}/logs/stream?${query}`,
        { raw: true, signal: controller.signal });
      const reader = response.body.getReader();
      let buffer = new Uint8Array(0);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        attempts = 0;
        const joined = new Uint8Array(buffer.length + value.length);
        joined.set(buffer);
        joined.set(value, buffer.length);
        buffer = joined;
        let at = 0;
        while (buffer.length - at >= FRAME.HEADER) {
          const view = new DataView(buffer.buffer, buffer.byteOffset + at);
          const kind = view.getUint8(0);
          const channel = view.getUint8(1);
          const offset = Number(view.getBigUint64(6));
          const length = view.getUint32(14);
          if (buffer.length - at < FRAME.HEADER + length) break;
          const payload = buffer.subarray(at + FRAME.HEADER, at + FRAME.HEADER + length);
          at += FRAME.HEADER + length;
          if (kind === FRAME.DATA && (channel === 1 || channel === 2)) {
            write(channel, payload);
            offsets[channel] = offset + length;
          } else if (kind === FRAME.EVENT) {
            const event = JSON.parse(new TextDecoder().decode(payload));
            for (const name of ["stdout", "stderr"]) {
              const skipped = event[`${name}_skipped`];
              if (skipped) note(`[${name}: bytes ${skipped[0]}-${skipped[1]} are no longer kept]`);
            }
          } else if (kind === FRAME.RESULT) {
            ended = true;
            const result = JSON.parse(new TextDecoder().decode(payload));
            const p = result.process;
            if (result.error) note(`[${result.error.message}]`);
            else if (p) note(`[${p.status}${p.exit_code === null ? "" : ` with exit code ${p.exit_code}`}${p.signal ? ` by signal ${p.signal}` : ""}]`);
          }
        }
        buffer = buffer.slice(at);
        out.scrollTop = out.scrollHeight;
      }
      if (ended) break;
    } catch (e) {
      if (controller.signal.aborted || e.name === "AbortError") return;
      if (e instanceof ApiError && e.status < 500) { note(`[${e.message}]`); break; }
    }
    if (++attempts > 5) { note("[the logs stream keeps dropping; click the process to retry]"); break; }
    await new Promise((resolve) => setTimeout(resolve, 1000 * attempts));  // then resume
  }
  if (state.logs === controller && state.tab === "processes") listProcesses();
}

// -- ports --------------------------------------------------------------------------------

async function listPorts() {
  const sandbox = state.selected;
  const rows = $("port-rows");
  let ports;
  try {
    ports = (await api("GET", `${sbPath(sandbox)}/ports`)).ports;
  } catch (e) {
    rows.replaceChildren(el("tr", {}, el("td", { className: "error", textContent: e.message })));
    return;
  }
  if (sandbox !== state.selected) return;
  rows.replaceChildren(...ports.map((p) => {
    const remove = el("button", { textContent: "Unexpose", className: "unexpose" });
    remove.addEventListener("click", async () => {
      remove.disabled = true;
      try { await api("DELETE", `${sbPath(sandbox)}/ports/${p.port}`); } catch (e) { showError(e); }
      listPorts();
    });
    const row = el("tr", {}, el("td", { textContent: p.port }), el("td", { textContent: p.name || "" }),
      el("td", {}, el("a", { href: p.url, target: "_blank", rel: "noopener noreferrer", textContent: p.url })),
      el("td", {}, remove));
    row.dataset.port = p.port;
    return row;
  }));
}

async function exposePort(event) {
  event.preventDefault();
  showError(null);
  const name = $("expose-name").value.trim();
  try {
    await api("POST", `${sbPath(state.selected)}/ports`, { json: { port: Number($("expose-port").value), name: name || null } });
    $("expose-port").value = "";
    $("expose-name").value = "";
  } catch (e) { showError(e); }
  listPorts();
}

// -- wiring -------------------------------------------------------------------------------

let timer = null;
function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  loadImages();
  refresh();
  clearInterval(timer);
  timer = setInterval(() => { refresh(); refreshPanel(); }, 5000);
}

// The lists that change behind the page's back (the SDK, the CLI) follow along.
function refreshPanel() {
  if (!state.selected || document.hidden) return;
  if (state.tab === "processes") listProcesses();
  if (state.tab === "ports") listPorts();
  if (state.tab === "usage") showUsage(state.selected);
}

$("login-form").addEventListener("submit", (e) => { e.preventDefault(); login($("login-key").value.trim()); });
$("logout").addEventListener("click", () => logout());
$("create-form").addEventListener("submit", create);
$("files-go").addEventListener("click", () => listFiles());
$("files-upload").addEventListener("change", upload);
$("expose-form").addEventListener("submit", exposePort);
$("processes-refresh").addEventListener("click", () => listProcesses());
for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));
window.addEventListener("resize", () => state.fit && state.fit.fit());
if (sessionStorage.getItem(KEY)) start(); else logout();
