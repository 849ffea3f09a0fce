// Usage in pictures: a sandbox's CPU and memory over the last 15 minutes (the server samples
// them every 15 s: GET /v1/sandboxes/{id}/metrics `history`, plus the reading of now), and the
// host's totals (Prometheus's /metrics, which the console's key may read). Plain SVG, no library.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const WINDOW_S = 15 * 60;

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function mib(bytes) { return `${(bytes / 1048576).toFixed(bytes < 10 * 1048576 ? 1 : 0)} MiB`; }

// One chart: `points` are [unix seconds, value]; y from 0 to `max`; x the last 15 minutes.
function usageChart(title, points, max, format, now) {
  const w = 600, h = 120, pad = 4;
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img", "aria-label": title });
  svg.append(svgEl("rect", { x: 0, y: 0, width: w, height: h, class: "chart-bg" }));
  for (const f of [0.25, 0.5, 0.75]) {
    svg.append(svgEl("line", { x1: 0, x2: w, y1: h * f, y2: h * f, class: "chart-grid" }));
  }
  const x = (t) => pad + (w - 2 * pad) * Math.min(1, Math.max(0, 1 - (now - t) / WINDOW_S));
  const y = (v) => h - pad - (h - 2 * pad) * Math.min(1, Math.max(0, v / (max || 1)));
  const coords = points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
  if (coords.length === 1) coords.unshift(`${pad},${coords[0].split(",")[1]}`); // one sample: a level line
  svg.append(svgEl("polyline", { points: coords.join(" "), class: "chart-line" }));
  const last = points.length ? points[points.length - 1][1] : 0;
  const figure = el("figure", { className: "usage" },
    el("figcaption", {}, el("b", { textContent: title }), " ",
       el("span", { className: "now", textContent: format(last) }),
       el("span", { className: "hint", textContent: ` of ${format(max)} · last 15 min` })));
  figure.append(svg);
  figure.dataset.points = String(points.length);
  return figure;
}

async function showUsage(sandbox) {
  const panel = $("usage-charts");
  let m;
  try {
    m = await api("GET", `${sbPath(sandbox)}/metrics`);
  } catch (e) {
    if (state.selected === sandbox) panel.replaceChildren(el("p", { className: "error", textContent: e.message }));
    return;
  }
  if (state.selected !== sandbox || state.tab !== "usage") return;
  const now = m.timestamp;
  const history = (m.history || []).filter((p) => now - p.timestamp <= WINDOW_S);
  const cpu = [...history.map((p) => [p.timestamp, p.cpu_percent]), [now, m.cpu_percent]];
  const mem = [...history.map((p) => [p.timestamp, p.memory_used_bytes]), [now, m.memory_used_bytes]];
  const disk = m.disk_limit_bytes ? `${mib(m.disk_used_bytes || 0)} of ${mib(m.disk_limit_bytes)}` : "-";
  panel.replaceChildren(
    usageChart(`CPU (${m.cpu_count} CPU)`, cpu, 100, (v) => `${v.toFixed(1)} %`, now),
    usageChart("Memory", mem, m.memory_limit_bytes, mib, now),
    el("p", { className: "usage-facts", textContent:
      `disk ${disk} · tasks ${m.pids} of ${m.pids_limit} · network in ${mib(m.net_rx_bytes)}, out ${mib(m.net_tx_bytes)}` }));
}

// Prometheus text format: the samples of `name` as {labels: value}.
function promSamples(text, name) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const match = line.match(/^(\w+)(?:\{([^}]*)\})?\s+(\S+)/);
    if (!match || match[1] !== name) continue;
    out[match[2] || ""] = Number(match[3]);
  }
  return out;
}

// The host's totals: sandboxes by state and what they were given, and the storage pool.
async function showHost(sandboxes) {
  const host = $("host");
  const running = sandboxes.filter((s) => s.status === "running");
  const cpus = running.reduce((n, s) => n + Number(s.cpu || 0), 0);
  const memory = running.reduce((n, s) => n + Number(s.memory_mb || 0), 0);
  const facts = [["running", running.length], ["sandboxes", sandboxes.length],
                 ["CPUs given", Number(cpus.toFixed(2))], ["memory given", `${memory} MiB`]];
  try {
    const response = await api("GET", "/metrics", { raw: true });
    const text = await response.text();
    for (const [labels, value] of Object.entries(promSamples(text, "hutch_sandboxes"))) {
      const st = (labels.match(/state="([^"]*)"/) || [])[1];
      if (st && st !== "running") facts.push([st, value]);
    }
    const storage = promSamples(text, "hutch_storage_bytes");
    const used = storage['kind="used"'], total = storage['kind="total"'];
    if (total) facts.push(["storage", `${(used / 2 ** 30).toFixed(1)} of ${(total / 2 ** 30).toFixed(1)} GiB`]);
  } catch (e) { /* /metrics off or refused: what the list says must do */ }
  host.replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", { textContent: k }), el("dd", { textContent: String(v) }))));
  host.hidden = false;
}
