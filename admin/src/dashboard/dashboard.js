// switchyard dashboard: the status document every second, the events
// stream (with Last-Event-ID, so a reconnect misses nothing), and the
// rollout actions. The admin token stays in this tab's session storage; a
// `#token=...` fragment (never sent to the server) is taken once and removed.
"use strict";

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
let token = null;
let lastEventId = null;
const weights = []; // [{t, green}]
const seenEvents = new Set();

function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    store.setItem("switchyard-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  return store.getItem("switchyard-token");
}

function headers(extra) {
  return Object.assign({ Authorization: "Bearer " + token }, extra || {});
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: headers(body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (r.status === 401) {
    store.removeItem("switchyard-token");
    showLogin("That token was refused.");
    throw new Error("unauthorized");
  }
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new Error((json && json.error) || text || r.statusText);
  return json;
}

function showLogin(why) {
  $("app").hidden = true;
  $("login").hidden = false;
  if (why) $("message").textContent = why;
}

function fmt(n, digits) {
  return n === null || n === undefined ? "–" : Number(n).toFixed(digits === undefined ? 1 : digits);
}

function text(id, v) { $(id).textContent = v === null || v === undefined || v === "" ? "–" : v; }

function renderStatus(s) {
  const state = s.rollout.state;
  const st = $("state");
  st.textContent = state;
  st.className = "pill state-" + state;
  const g = s.weights.green, b = s.weights.blue;
  text("weights-green", fmt(g, 2).replace(/\.?0+$/, ""));
  text("weights-blue", fmt(b, 2).replace(/\.?0+$/, ""));
  $("bar-green").style.width = g + "%";
  $("bar-blue").style.width = b + "%";
  weights.push({ t: Date.now(), green: g });
  while (weights.length && weights[0].t < Date.now() - 10 * 60 * 1000) weights.shift();
  drawChart();

  const steps = s.rollout.steps || [];
  const ol = $("steps");
  ol.replaceChildren(...steps.map((w, i) => {
    const li = document.createElement("li");
    li.textContent = w + "%";
    if (s.rollout.step !== null && s.rollout.step !== undefined) {
      if (i < s.rollout.step) li.className = "done";
      if (i === s.rollout.step) li.className = "current";
    }
    return li;
  }));
  text("holding", s.rollout.holding);
  text("reason", s.rollout.reason);
  const active = ["preparing", "progressing", "paused", "cutover"].includes(state);
  $("btn-start").disabled = active;
  $("btn-pause").disabled = !["preparing", "progressing"].includes(state);
  $("btn-resume").disabled = state !== "paused";
  $("btn-promote").disabled = !(active || state === "idle") || state === "cutover";
  $("btn-abort").disabled = !(active || (state === "promoted" && s.database));

  const win = s.analysis.window_seconds || 1;
  for (const c of ["blue", "green"]) {
    const w = s.pools[c].window;
    const failures = w.server_errors + w.transport_failures;
    text(c + "-rate", fmt(w.requests / win, 1));
    text(c + "-err", w.requests ? fmt(100 * failures / w.requests, 2) + "%" : "–");
    text(c + "-p50", w.p50_seconds === null ? "–" : fmt(w.p50_seconds * 1000, 1) + " ms");
    text(c + "-p99", w.p99_seconds === null ? "–" : fmt(w.p99_seconds * 1000, 1) + " ms");
    text(c + "-healthy", s.pools[c].healthy + " of " + s.pools[c].upstreams.length);
  }
  text("verdict", s.analysis.verdict ? s.analysis.verdict + (s.analysis.detail ? ": " + s.analysis.detail : "") : "not judging (no rollout)");

  const gates = $("gates");
  const items = [];
  for (const [name, g] of Object.entries(s.gates || {})) {
    const li = document.createElement("li");
    const b = document.createElement("span");
    b.className = g.gate === "pass" ? "pass" : "hold";
    b.textContent = g.gate === "pass" ? "passes" : "holds";
    li.append(name + " ", b, g.reason ? ": " + g.reason : "");
    items.push(li);
  }
  if (!items.length) {
    const li = document.createElement("li");
    li.textContent = "bake time, analysis and candidate health only";
    items.push(li);
  }
  gates.replaceChildren(...items);

  const db = s.database;
  $("database-card").hidden = !db;
  if (db) {
    text("db-writer", db.writer + (db.write_gate && db.write_gate.held ? " (writes held for cutover)" : ""));
    text("db-verified", db.verified === undefined ? "–" : (db.verified ? "yes" : "no") + (db.reason ? " — " + db.reason : ""));
    text("db-schema", (db.schema_version || "none") + " (newest migration " + (db.latest_migration || "none") + ")");
    const r = db.replication;
    text("db-replication", r ? r.state + (r.direction ? " (" + r.direction + ")" : "") : "–");
    text("db-lag", r && r.lag_bytes !== null && r.lag_bytes !== undefined
      ? fmt(r.lag_seconds, 3) + " s, " + r.lag_bytes + " bytes; slot keeps " + (r.retained_wal_bytes || 0) + " bytes of WAL" : "–");
    const c = db.last_cutover;
    text("db-cutover", c ? (c.completed ? "completed" : "timed out") + ", writes held " + Math.round(c.held_seconds * 1000) + " ms (" + c.held_requests + " waited)" : "–");
    $("db-steps").replaceChildren(...(db.preparing || []).map((p) => {
      const li = document.createElement("li");
      li.className = p.state;
      li.textContent = p.step + ": " + p.state;
      li.title = p.detail || "";
      return li;
    }));
  }
}

function drawChart() {
  const svg = $("chart");
  if (weights.length < 1) return;
  const t0 = weights[0].t, t1 = Math.max(weights[weights.length - 1].t, t0 + 1);
  const pts = weights.map((p) => ((p.t - t0) / (t1 - t0) * 600).toFixed(1) + "," + (118 - p.green * 1.16).toFixed(1));
  svg.innerHTML = '<line x1="0" y1="60" x2="600" y2="60" stroke="#e3e6ea"/>' +
    '<polyline fill="none" stroke="#21a366" stroke-width="2" points="' + pts.join(" ") + '"/>';
}

function addEvent(e) {
  if (seenEvents.has(e.seq)) return;
  seenEvents.add(e.seq);
  lastEventId = Math.max(lastEventId || 0, e.seq);
  const li = document.createElement("li");
  li.className = e.kind;
  const time = (e.at || "").replace("T", " ").replace(/\..*/, "");
  const k = document.createElement("span");
  k.className = "kind";
  k.textContent = e.kind;
  const extra = e.held_ms !== undefined ? " (writes held " + e.held_ms + " ms)" : "";
  li.append(time + " ", k, " by " + e.actor + " — green " + e.weights.green + "%" + (e.reason ? ": " + e.reason : "") + extra);
  const ol = $("events");
  ol.prepend(li);
  while (ol.children.length > 200) ol.lastChild.remove();
}

async function followEvents() {
  for (;;) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastEventId !== null) h["Last-Event-ID"] = String(lastEventId);
      const r = await fetch("/api/v1/events", { headers: h });
      if (!r.ok) throw new Error(r.statusText);
      setConnected(true);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (data) { try { addEvent(JSON.parse(data)); } catch (_) { /* comment or junk */ } }
        }
      }
    } catch (_) { /* reconnect below */ }
    setConnected(false);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function setConnected(on) {
  const c = $("conn");
  c.textContent = on ? "live" : "offline";
  c.className = "pill " + (on ? "on" : "off");
}

async function poll() {
  for (;;) {
    try { renderStatus(await api("GET", "/api/v1/status")); } catch (_) { /* shown by the pill */ }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function act(action) {
  const reason = $("action-reason").value.trim();
  const m = $("message");
  m.className = "message";
  m.textContent = action + "…";
  try {
    const s = await api("POST", "/api/v1/rollout/" + action, reason ? { reason } : undefined);
    renderStatus(s);
    m.textContent = action + ": done, the rollout is " + s.rollout.state;
    $("action-reason").value = "";
  } catch (e) {
    m.className = "message error";
    m.textContent = action + " refused: " + e.message;
  }
}

async function start() {
  token = takeToken();
  if (!token) { showLogin(); return; }
  $("login").hidden = true;
  $("app").hidden = false;
  try {
    const h = await api("GET", "/api/v1/history?limit=100");
    for (const e of h.events) {
      addEvent(e);
      weights.push({ t: e.at_ms, green: e.weights.green });
    }
  } catch (_) { return; }
  poll();
  followEvents();
}

for (const b of document.querySelectorAll("button[data-action]")) {
  b.addEventListener("click", () => act(b.dataset.action));
}
$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  store.setItem("switchyard-token", $("token").value);
  start();
});
start();
