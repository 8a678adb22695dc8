// weft's dashboard: one page per pattern, each a function that renders from the node's HTTP
// API (the calls are in /openapi.json). A page is added in one place: the PAGES list.
"use strict";

const state = {
  token: sessionStorage.getItem("weft-token"),
  timer: null,
  // Open watch streams of the current page (aborted when the page changes).
  watches: [],
  // Breaker totals per gateway route, sampled at each refresh: [[time ms, totals], ...].
  breakers: {},
  // Election terms seen while the locks page is open, by election name.
  terms: {},
};

// The data layer: every call goes through here (token, errors, JSON).
async function api(path, body) {
  const headers = { "content-type": "application/json" };
  if (state.token) headers.authorization = "Bearer " + state.token;
  const init = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  if (r.status === 401) {
    await askToken();
    return api(path, body);
  }
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = text; }
  if (!r.ok) {
    const msg = v && v.error ? `${v.error.code}: ${v.error.message}` : `${r.status} ${text}`;
    throw new Error(msg);
  }
  return v;
}

// A user's token from the node (POST /v1/auth/authenticate), or "" if the login failed.
async function login(name, password) {
  const r = await fetch("/v1/auth/authenticate", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name, password }),
  });
  if (!r.ok) return "";
  const v = await r.json();
  return v.token || "";
}

function askToken() {
  return new Promise((resolve) => {
    const d = document.getElementById("token-dialog");
    const form = document.getElementById("token-form");
    form.onsubmit = async () => {
      const user = document.getElementById("user").value;
      const secret = document.getElementById("token").value;
      // A user logs in for a token (its roles' permissions apply); a failed login leaves no
      // token, so the next call asks again.
      state.token = user ? await login(user, secret) : secret;
      sessionStorage.setItem("weft-token", state.token);
      resolve();
    };
    document.getElementById("token").value = "";
    d.showModal();
  });
}

// A live view: the node's SSE watch of a key prefix, read with fetch (EventSource cannot send
// the token). `onChange` gets each batch of events; the stream is aborted when the page
// changes and reopened after an error.
function watch(prefix, onChange, fromRevision) {
  const ctrl = new AbortController();
  state.watches.push(ctrl);
  const page = document.getElementById("page");
  const open = async () => {
    const headers = {};
    if (state.token) headers.authorization = "Bearer " + state.token;
    // From the revision the page showed, so a change made meanwhile is not missed.
    const from = fromRevision ? `&start_revision=${fromRevision}` : "";
    const url = "/v1/watch?prefix=true&encoding=base64&key=" + encodeURIComponent(btoa(prefix)) + from;
    const r = await fetch(url, { headers, signal: ctrl.signal });
    if (!r.ok) throw new Error(`watch ${prefix}: ${r.status}`);
    page.setAttribute("data-live", String(Number(page.getAttribute("data-live") || 0) + 1));
    // Without a start revision, what changed before the stream opened is read once now.
    if (!fromRevision) onChange({ events: [] });
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
        let ev = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) ev = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (ev === "watch" && data) {
          const batch = JSON.parse(data);
          // A reopened stream goes on after the last batch seen.
          if (fromRevision && batch.revision) fromRevision = Number(batch.revision) + 1;
          onChange(batch);
        }
      }
    }
  };
  const loop = async () => {
    while (!ctrl.signal.aborted) {
      try { await open(); } catch (_) { /* reopened below */ }
      if (ctrl.signal.aborted) return;
      page.setAttribute("data-live", String(Math.max(0, Number(page.getAttribute("data-live") || 1) - 1)));
      await new Promise((res) => setTimeout(res, 2000));
    }
  };
  loop();
}

// Runs `f` once after a burst of calls (events often come in groups).
function debounce(f, ms) {
  let t = null;
  return (...a) => { clearTimeout(t); t = setTimeout(() => f(...a), ms); };
}

// The outcome of a write action, kept across the page's refreshes: a status element that shows
// it, and `say` to set it.
function outcome(id) {
  const el = h("p", { id, class: "error", role: "status" }, (state.said ||= {})[id] || "");
  const say = (text) => { state.said[id] = text; el.textContent = text; };
  return [el, say];
}

// Small DOM helpers.
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
const card = (label, value) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", "data-field": label }, value));
// A table in its own horizontal scroller, so a wide one never widens the page (phones).
function table(cols, rows) {
  return h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))));
}
const bytes = (n) => n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";

// A value as text: JSON pretty-printed, UTF-8 as is, anything else as hex.
function showValue(b64) {
  const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
  } catch (_) {
    return Array.from(raw, (x) => x.toString(16).padStart(2, "0")).join(" ") + "  (hex)";
  }
}

// An SVG line of the last samples.
function chart(values) {
  const w = 300, hgt = 60, n = values.length;
  const max = Math.max(1, ...values);
  const d = values.map((v, i) => `${i ? "L" : "M"}${(i / Math.max(1, n - 1)) * w},${hgt - (v / max) * hgt}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `writes per second, last ${n} samples, peak ${max.toFixed(0)}`);
  const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
  p.setAttribute("d", d || "M0,0");
  p.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(p);
  const last = n ? values[n - 1] : 0;
  return h("figure", {}, svg, h("figcaption", { class: "muted" }, `now ${last.toFixed(0)}/s, peak ${max.toFixed(0)}/s over the last ${n} samples (2 s apart)`));
}

// Several lines on one SVG, each with its class (colour) and a legend.
function lines(series, caption, id, unit = "/s") {
  const w = 300, hgt = 60;
  const n = Math.max(1, ...series.map((s) => s.values.length));
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", caption);
  for (const s of series) {
    const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
    const d = s.values.map((v, i) => `${i ? "L" : "M"}${(i / Math.max(1, n - 1)) * w},${hgt - (v / max) * hgt}`).join(" ");
    p.setAttribute("d", d || "M0,0");
    p.setAttribute("class", s.cls);
    p.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(p);
  }
  const legend = series.map((s) => h("span", { class: "legend " + s.cls }, `${s.name} ${(s.values.at(-1) || 0).toFixed(unit ? 1 : 0)}${unit}`));
  return h("figure", { "data-chart": id }, svg, h("figcaption", { class: "muted" }, caption, " ", ...legend));
}

// Horizontal bars: [[label, value], ...], scaled to the largest (or to `max`).
function bars(rows, fmt, max) {
  const top = max || Math.max(1e-9, ...rows.map((r) => r[1]));
  return h("div", { class: "bars" }, rows.map(([label, v]) => h("div", { class: "bar-row" },
    h("span", { class: "bar-label" }, label),
    h("span", { class: "bar", style: `width:${Math.max(0.5, (v / top) * 100).toFixed(1)}%` }),
    h("span", { class: "bar-value" }, fmt(v)))));
}

/// A query parameter of the page's hash (`#/keys?prefix=a/&key=a/b`).
function param(name) {
  const q = location.hash.split("?")[1] || "";
  const v = new URLSearchParams(q).get(name);
  return v === null ? "" : v;
}

// Pages.
// Labels of a Prometheus line `name{a="x",b="y"} v`.
function labels(text, name) {
  const line = String(text).split("\n").find((l) => l.startsWith(name + "{"));
  const out = {};
  if (line) for (const m of line.matchAll(/(\w+)="([^"]*)"/g)) out[m[1]] = m[2];
  return out;
}

const duration = (s) => s >= 86400 ? `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`
  : s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s` : `${Math.floor(s)} s`;

async function overview(el) {
  const s = await api("/v1/status");
  const metrics = await api("/metrics").catch(() => "");
  const gws = await api("/v1/gateways").catch(() => null);
  // The node keeps the last 5 minutes (a sample every 2 s), so the charts start full.
  const hist = await api("/v1/history");
  const xs = hist.samples || [];
  const rate = (f) => xs.slice(1).map((x, i) => ((x[f] ?? 0) - (xs[i][f] ?? 0)) / Math.max(0.001, (x.at_ms - xs[i].at_ms) / 1000));
  const info = labels(metrics, "weft_node_info");
  const rev = Number(s.header.revision);
  const series = (name, f, cls) => ({ name, cls, values: rate(f) });
  const span = xs.length > 1 ? duration((xs.at(-1).at_ms - xs[0].at_ms) / 1000) : "0 s";
  const traffic = [series("writes", "revision", "s-success")];
  if (xs.length && xs[0].reads !== undefined) traffic.push(series("reads", "reads", "s-slow"), series("watch events", "watch_events", "s-rejected"));
  const fsyncs = xs.length && xs[0].fsyncs !== undefined ? rate("fsyncs") : [];
  el.replaceChildren(h("h1", {}, "Overview"),
    h("div", { class: "cards" }, card("revision", rev), card("compact revision", s.compact_revision),
      card("size", bytes(Number(s.db_size))), card("fsync", info.fsync || "?"),
      card("uptime", duration((Date.now() - hist.started_ms) / 1000)), card("version", s.version),
      card("gateways", gws ? h("a", { href: "#/gateways" }, String(gws.gateways.length)) : "?")),
    h("h2", {}, "Writes, reads and watch events per second"),
    lines(traffic, `over the last ${span} (a sample every 2 s)`, "traffic"),
    h("h2", {}, "Log fsyncs per second"), chart(fsyncs.length ? fsyncs : [0]));
}

async function keys(el) {
  const prefix = param("prefix");
  const input = h("input", { type: "search", value: prefix, "aria-label": "key prefix", placeholder: "prefix" });
  const detail = h("div", { id: "key-detail" });
  const list = h("div", { id: "key-list" });
  const go = h("button", { onclick: () => { location.hash = "#/keys?prefix=" + encodeURIComponent(input.value); } }, "List");
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") go.click(); });
  const { kvs, revision } = await keyList(list, detail, prefix);
  el.replaceChildren(h("h1", {}, "Keys"), h("div", { class: "row" }, input, go), list, detail);
  // A key named in the address opens at once (`#/keys?prefix=a/&key=a/b`).
  const want = param("key");
  const kv = kvs.find((k) => atob(k.key) === want);
  if (kv) await openKey(detail, kv);
  // Live: the list follows the store; an open key whose revision moved says so (its editor
  // stays as it is, and a save would be refused by its revision compare).
  watch(prefix, debounce(async (batch) => {
    await keyList(list, detail, prefix);
    const open = state.openKey;
    for (const ev of batch.events || []) {
      if (open && ev.kv && atob(ev.kv.key) === open.name && ev.kv.mod_revision > open.rev) {
        const note = document.getElementById("key-stale");
        if (note) note.textContent = `${open.name} changed at revision ${ev.kv.mod_revision} (${ev.type}) since you opened it at ${open.rev}; open it again to edit the new value.`;
      }
    }
  }, 100), revision + 1);
}

// The key list of a prefix; returns its key-values and the revision they were read at.
async function keyList(list, detail, prefix) {
  const r = await api("/v1/kv/range", { key: btoa(prefix), prefix: true, encoding: "base64", limit: 500 });
  const rows = (r.kvs || []).map((kv) => {
    const name = atob(kv.key);
    return [h("a", { href: "javascript:void 0", "data-key": name, onclick: () => openKey(detail, kv) }, name), kv.version, kv.mod_revision, kv.lease || ""];
  });
  // The tree's next level: the prefixes one "/" deeper, each with its key count.
  const folders = {};
  for (const kv of r.kvs || []) {
    const rest = atob(kv.key).slice(prefix.length);
    const i = rest.indexOf("/", rest.startsWith("/") ? 1 : 0);
    if (i >= 0) folders[prefix + rest.slice(0, i + 1)] = (folders[prefix + rest.slice(0, i + 1)] || 0) + 1;
  }
  const up = prefix.replace(/[^/]*\/?$/, "");
  const tree = h("nav", { class: "row", "aria-label": "key tree" },
    prefix ? h("a", { href: "#/keys?prefix=" + encodeURIComponent(up), "data-folder": up }, "↑ " + (up || "(all keys)")) : "",
    Object.entries(folders).map(([f, n]) => h("a", { href: "#/keys?prefix=" + encodeURIComponent(f), "data-folder": f }, `${f} (${n})`)));
  list.replaceChildren(tree, h("p", { class: "muted" }, `${r.count} keys at revision ${r.header.revision}` + (r.more ? " (first 500 shown)" : "")),
    table(["key", "version", "mod revision", "lease"], rows));
  return { kvs: r.kvs || [], revision: Number(r.header.revision) };
}

// A key's earlier values, newest first, back to the compaction point (20 at most).
async function history(kv) {
  const out = [];
  let rev = kv.mod_revision;
  for (let i = 0; i < 20 && rev > 1; i++) {
    let r;
    try {
      r = await api("/v1/kv/range", { key: kv.key, encoding: "base64", revision: rev - 1 });
    } catch (e) {
      out.push([h("span", { class: "muted" }, "earlier revisions compacted"), "", ""]);
      break;
    }
    const prev = (r.kvs || [])[0];
    if (!prev) break;
    out.push([prev.mod_revision, prev.version, showValue(prev.value)]);
    rev = prev.mod_revision;
  }
  return out;
}

async function openKey(el, kv) {
  const name = atob(kv.key);
  state.openKey = { name, rev: kv.mod_revision };
  const text = h("textarea", { id: "key-value", rows: 6, cols: 60, "aria-label": "new value" }, showValue(kv.value));
  const out = h("p", { id: "key-result", class: "error", role: "status" });
  const save = async () => {
    if (!confirm(`Write ${name} if it is still at revision ${kv.mod_revision}?`)) return;
    try {
      const t = await api("/v1/kv/txn", {
        compare: [{ key: name, target: "mod_revision", op: "=", value: kv.mod_revision }],
        success: [{ put: { key: name, value: text.value } }],
      });
      out.textContent = t.succeeded ? `written at revision ${t.header.revision}` : `not written: ${name} changed since revision ${kv.mod_revision}; reload it`;
    } catch (e) { out.textContent = e.message; }
  };
  const del = async () => {
    if (!confirm(`Delete ${name} if it is still at revision ${kv.mod_revision}?`)) return;
    try {
      const t = await api("/v1/kv/txn", {
        compare: [{ key: name, target: "mod_revision", op: "=", value: kv.mod_revision }],
        success: [{ delete: { key: name } }],
      });
      out.textContent = t.succeeded ? `deleted at revision ${t.header.revision}` : `not deleted: ${name} changed since revision ${kv.mod_revision}`;
    } catch (e) { out.textContent = e.message; }
  };
  el.replaceChildren(h("h2", {}, name), h("p", { id: "key-stale", class: "error", role: "status" }),
    table(["create revision", "mod revision", "version", "lease"], [[kv.create_revision, kv.mod_revision, kv.version, kv.lease || "none"]]),
    h("pre", {}, showValue(kv.value)), text,
    h("div", { class: "row" }, h("button", { id: "key-save", onclick: save }, "Save"), h("button", { id: "key-delete", onclick: del }, "Delete")), out,
    h("h2", {}, "History"), table(["mod revision", "version", "value"], await history(kv)));
}

async function leases(el) {
  const r = await api("/v1/lease/list");
  const [out, say] = outcome("lease-result");
  const revoke = async (id) => {
    if (!confirm(`Revoke lease ${id}? The keys attached to it are deleted.`)) return;
    try {
      await api("/v1/lease/revoke", { id });
      say(`lease ${id} revoked`);
    } catch (e) { say(e.message); }
  };
  const rows = [];
  for (const id of (r.leases || []).slice(0, 200)) {
    const t = await api("/v1/lease/ttl", { id, keys: true }).catch(() => null);
    const keys = t && t.keys ? t.keys : [];
    rows.push([String(id), t ? t.ttl + " s" : "?", t ? t.granted_ttl + " s" : "?", keys.join(", "),
      h("button", { "data-revoke": String(id), onclick: () => revoke(id) }, "Revoke")]);
  }
  el.replaceChildren(h("h1", {}, "Leases"), out, table(["id", "TTL left", "granted TTL", "keys", ""], rows));
}

async function prefixed(prefix) {
  const r = await api("/v1/kv/range", { key: btoa(prefix), prefix: true, encoding: "base64", limit: 1000 });
  return (r.kvs || []).map((kv) => ({ key: atob(kv.key).slice(prefix.length), kv }));
}

async function services(el) {
  const all = await prefixed("/weft/svc/");
  const rows = all.map(({ key, kv }) => {
    const [svc, id] = key.split("/");
    let inst = {};
    try { inst = JSON.parse(showValue(kv.value)); } catch (_) {}
    const health = inst.health || "";
    const meta = Object.entries(inst.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    return [svc, id, inst.address || "", h("span", { class: health === "passing" ? "ok" : "bad" }, health),
      (inst.tags || []).join(", "), inst.weight ?? "", inst.version || "", meta, kv.mod_revision];
  });
  el.replaceChildren(h("h1", {}, "Services"),
    table(["service", "instance", "address", "health", "tags", "weight", "version", "metadata", "last change (revision)"], rows));
}

// TTL left of a lease (null if it is gone).
const ttlOf = (lease) => api("/v1/lease/ttl", { id: parseInt(lease, 16) }).then((t) => t.ttl).catch(() => null);

async function locks(el) {
  // Waiter keys are PREFIX/NAME/LEASE(hex); the oldest create revision holds.
  const groups = async (prefix) => {
    const by = {};
    for (const { key, kv } of await prefixed(prefix)) {
      const i = key.lastIndexOf("/");
      (by[key.slice(0, i)] ||= []).push({ lease: key.slice(i + 1), kv });
    }
    for (const ks of Object.values(by)) ks.sort((a, b) => a.kv.create_revision - b.kv.create_revision);
    return by;
  };
  const lockRows = [];
  for (const [name, ks] of Object.entries(await groups("/weft/lock/"))) {
    const ttl = await ttlOf(ks[0].lease);
    lockRows.push([name, ks[0].lease, ks[0].kv.create_revision, ttl === null ? "?" : ttl + " s",
      ks.slice(1).map((k) => k.lease).join(", ") || "none"]);
  }
  const semRows = Object.entries(await groups("/weft/sem/")).map(([name, ks]) =>
    [name, ks.map((k) => `${k.lease} (${k.kv.create_revision})`).join(", ")]);
  const elections = await groups("/weft/election/");
  const electionRows = [];
  for (const [name, ks] of Object.entries(elections)) {
    const leader = ks[0];
    // Terms seen while this page is open: each new leader key is a new term.
    const seen = (state.terms[name] ||= []);
    if (!seen.length || seen.at(-1).term !== leader.kv.create_revision) {
      seen.push({ term: leader.kv.create_revision, lease: leader.lease, value: showValue(leader.kv.value), at: new Date().toISOString() });
    }
    electionRows.push([name, leader.lease, leader.kv.create_revision, showValue(leader.kv.value),
      ks.slice(1).map((k) => k.lease).join(", ") || "none",
      seen.map((t) => `term ${t.term}: ${t.value} (${t.lease})`).join("; ")]);
  }
  el.replaceChildren(h("h1", {}, "Locks and elections"),
    h("h2", {}, "Locks"), table(["name", "holder lease", "fencing token", "lease TTL left", "waiters in order"], lockRows),
    h("h2", {}, "Semaphores"), h("p", { class: "muted" }, "Holders are the first N in order (N is the permits each client asks for)."),
    table(["name", "holders and waiters in order (lease, revision)"], semRows),
    h("h2", {}, "Elections"), table(["name", "leader lease", "term", "value", "candidates in order", "terms seen on this page"], electionRows));
}

const SAGA_STATES = ["running", "compensating", "parked", "committed", "compensated", "aborted"];
const stepClass = (st) => ({ succeeded: "ok", compensated: "muted", failed: "bad", running: "", compensating: "bad", pending: "muted" }[st] ?? "");

async function sagas(el) {
  const want = param("state");
  const id = param("id");
  const q = want ? `?state=${encodeURIComponent(want)}&limit=200` : "?limit=50";
  const r = await api("/v1/saga/list" + q);
  const list = r.sagas || [];
  const filter = h("nav", { class: "row", "aria-label": "saga states" },
    h("a", { href: "#/sagas", "aria-current": want ? undefined : "page" }, "all"),
    SAGA_STATES.map((s) => h("a", { href: "#/sagas?state=" + s, "aria-current": want === s ? "page" : undefined }, s)));
  const rows = list.map((s) => [h("a", { href: `#/sagas?${want ? "state=" + want + "&" : ""}id=${encodeURIComponent(s.id)}`, "data-saga": s.id }, s.id),
    s.name || "", h("span", { class: stepClass({ committed: "succeeded", parked: "failed", aborted: "failed" }[s.status] || s.status) }, s.status),
    s.parked ? `${s.parked.step} (${s.parked.phase}): ${s.parked.error}` : s.reason || "",
    s.updated_ms ? new Date(s.updated_ms).toISOString() : ""]);
  const parts = [h("h1", {}, "Sagas"), filter, table(["id", "name", "status", "parked at / reason", "updated"], rows)];
  if (id) parts.push(await sagaDetail(id));
  el.replaceChildren(...parts);
}

// The step graph: one column per dependency depth, arrows from each step to those after it.
function sagaGraph(def, steps) {
  const depth = {};
  const byName = Object.fromEntries(def.steps.map((s) => [s.name, s]));
  const d = (n) => depth[n] ??= Math.max(-1, ...(byName[n].after || []).map(d)) + 1;
  def.steps.forEach((s) => d(s.name));
  const cols = [];
  def.steps.forEach((s) => (cols[depth[s.name]] ||= []).push(s.name));
  const W = 150, H = 46, GX = 60, GY = 18;
  const pos = {};
  cols.forEach((c, x) => c.forEach((n, y) => { pos[n] = [x * (W + GX) + 4, y * (H + GY) + 4]; }));
  const svgW = cols.length * (W + GX), svgH = Math.max(...cols.map((c) => c.length)) * (H + GY) + 4;
  const NS = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs) => { const e = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
  const svg = mk("svg", { viewBox: `0 0 ${svgW} ${svgH}`, width: svgW, height: svgH, class: "graph", role: "img", "aria-label": "saga step graph" });
  for (const s of def.steps) for (const a of s.after || []) {
    const [x1, y1] = pos[a], [x2, y2] = pos[s.name];
    svg.append(mk("path", { d: `M${x1 + W},${y1 + H / 2} C${x1 + W + GX / 2},${y1 + H / 2} ${x2 - GX / 2},${y2 + H / 2} ${x2},${y2 + H / 2}`, class: "edge" }));
  }
  for (const s of def.steps) {
    const [x, y] = pos[s.name];
    const st = (steps[s.name] || {}).status || "pending";
    const g = mk("g", { class: "node " + st, "data-step": s.name });
    g.append(mk("rect", { x, y, width: W, height: H, rx: 6 }));
    const t1 = mk("text", { x: x + 8, y: y + 19 }); t1.textContent = s.name;
    const t2 = mk("text", { x: x + 8, y: y + 37, class: "sub" }); t2.textContent = st;
    g.append(t1, t2);
    svg.append(g);
  }
  return svg;
}

async function sagaDetail(id) {
  const v = await api("/v1/saga/get?id=" + encodeURIComponent(id));
  const [out, say] = outcome("saga-result");
  const act = async (what, body) => {
    if (!confirm(`${what} saga ${id}${body.step ? " at step " + body.step : ""}?`)) return;
    try {
      await api(`/v1/saga/${what}`, body);
      say(`${what}: done`);
    } catch (e) { say(e.message); }
  };
  const actions = v.status === "parked" ? [
    h("button", { id: "saga-resume", onclick: () => act("resume", { id }) }, "Resume"),
    h("button", { id: "saga-skip", onclick: () => act("skip", { id, step: v.parked.step }) }, `Mark ${v.parked.step} done`),
  ] : [];
  if (["running", "compensating", "parked"].includes(v.status)) actions.push(h("button", { id: "saga-abort", onclick: () => act("abort", { id }) }, "Abort"));
  const t0 = v.created_ms || 0;
  return h("section", { id: "saga-detail" }, h("h2", {}, `${v.name} ${id}`),
    h("div", { class: "cards" }, card("status", v.status), card("steps", Object.keys(v.steps || {}).length),
      card("created", new Date(v.created_ms).toISOString()), card("events", v.events)),
    v.parked ? h("p", { class: "error" }, `parked at ${v.parked.step} (${v.parked.phase}) after ${v.parked.attempts} attempts: ${v.parked.error}`) : "",
    v.reason ? h("p", { class: "muted" }, v.reason) : "",
    h("div", { class: "row" }, actions), out,
    h("h3", {}, "Steps"), sagaGraph(v.definition, v.steps || {}),
    table(["step", "status", "attempts", "compensation attempts", "last error"], Object.entries(v.steps || {}).map(([n, s]) =>
      [n, h("span", { class: stepClass(s.status) }, s.status + (s.unknown ? " (outcome unknown)" : "")), s.attempts ?? 0, s.compensation_attempts ?? 0, s.last_error || ""])),
    h("h3", {}, "Timeline"),
    table(["at (ms after start)", "event", "step", "phase", "attempt", "took (ms)", "detail"], (v.timeline || []).map((e) =>
      [e.at_ms - t0, e.kind, e.step || "", e.phase || "", e.attempt ?? "", e.duration_ms ?? "", e.detail || ""])));
}

async function queues(el) {
  const r = await api("/v1/queue/topics").catch((e) => ({ error: e.message }));
  if (r.error) return el.replaceChildren(h("h1", {}, "Queues"), h("p", { class: "error" }, r.error));
  const names = (r.topics || []).map((t) => t.name || t);
  const parts = [h("h1", {}, "Queues")];
  const rows = [];
  const details = [];
  for (const name of names) {
    const t = await api("/v1/queue/topic?name=" + encodeURIComponent(name));
    const depth = (t.partitions || []).reduce((a, p) => a + (p.end - p.start), 0);
    rows.push([h("a", { href: "#/queues?topic=" + encodeURIComponent(name) }, name), (t.partitions || []).length, depth,
      (t.groups || []).map((g) => `${g.name} (lag ${g.lag})`).join(", ")]);
    // Depth and each group's lag over time, sampled at each refresh.
    const hist = (state.queues ||= {})[name] ||= [];
    hist.push({ depth, lags: Object.fromEntries((t.groups || []).map((g) => [g.name, g.lag])) });
    if (hist.length > 90) hist.shift();
    if (param("topic") === name) details.push(await topicDetail(t, hist));
  }
  parts.push(table(["topic", "partitions", "messages", "groups"], rows), ...details);
  el.replaceChildren(...parts);
}

async function topicDetail(t, hist) {
  const [out, say] = outcome("dlq-result");
  const dead = (await api("/v1/queue/dead?topic=" + encodeURIComponent(t.name) + "&max=100")).dead || [];
  const replay = async (offsets) => {
    if (!confirm(offsets ? `Replay dead letter ${offsets[0]} of ${t.name}?` : `Replay every dead letter of ${t.name}?`)) return;
    try {
      const r = await api("/v1/queue/dead/replay", offsets ? { topic: t.name, offsets } : { topic: t.name });
      say(`${r.replayed} replayed`);
    } catch (e) { say(e.message); }
  };
  const groups = (t.groups || []).map((g) => [g.name, g.lag, g.in_flight, g.delayed, g.redeliveries, g.dead, g.oldest_unacked_ms ? g.oldest_unacked_ms + " ms" : ""]);
  const colors = ["s-success", "s-failure", "s-slow", "s-rejected"];
  const series = [{ name: "depth", cls: "s-depth", values: hist.map((x) => x.depth) },
    ...(t.groups || []).map((g, i) => ({ name: `${g.name} lag`, cls: colors[i % colors.length], values: hist.map((x) => x.lags[g.name] ?? 0) }))];
  return h("section", { id: "topic-detail" }, h("h2", {}, `Topic ${t.name}`),
    table(["partition", "first offset", "next offset", "messages", "bytes"], (t.partitions || []).map((p) => [p.partition, p.start, p.end, p.end - p.start, bytes(p.bytes)])),
    h("h3", {}, "Groups"), table(["group", "lag", "in flight", "delayed", "redeliveries", "dead", "oldest unacked"], groups),
    lines(series, "messages and lag over the last samples (2 s apart)", "queue/" + t.name, ""),
    h("h3", {}, `Dead letters (${dead.length})`),
    h("div", { class: "row" }, h("button", { id: "dlq-replay-all", onclick: () => replay(null) }, "Replay all")), out,
    table(["dead-letter offset", "group", "reason", "deliveries", "last error", "from", "value", ""], dead.map((m) => {
      const hd = m.headers || {};
      return [m.offset, hd["weft-dead-group"] || "", hd["weft-dead-reason"] || "", hd["weft-dead-deliveries"] || "", hd["weft-dead-error"] || "",
        `${hd["weft-dead-partition"] ?? "?"}:${hd["weft-dead-offset"] ?? "?"}`, showValue(m.value).slice(0, 200),
        h("button", { "data-replay": String(m.offset), onclick: () => replay([m.offset]) }, "Replay")];
    })));
}

async function replication(el) {
  const s = await api("/v1/repl/status");
  const parts = [h("h1", {}, "Replication"),
    h("div", { class: "cards" }, card("role", s.role), card("revision", s.revision), card("epoch", s.epoch),
      card("policy", s.policy), card("loss window", s.loss_window), card("degraded", s.degraded ? "yes (semi-sync " + s.degraded + ")" : "no"))];
  if (s.replicas.length) {
    parts.push(h("h2", {}, "Replicas"), table(["name", "state", "revision", "lag (revisions)", "lag (bytes)", "lag (s)", "last check"],
      s.replicas.map((r) => [r.name, r.state, r.revision, r.lag_revisions, r.lag_bytes, r.lag_seconds.toFixed(3), r.last_check ? r.last_check.outcome : ""])));
  }
  if (s.follower) {
    const f = s.follower;
    parts.push(h("h2", {}, "Primary"), table(["primary", "state", "primary revision", "staleness (ms)", "last error"],
      [[f.primary, f.state, f.primary_revision, f.staleness_ms, f.last_error || ""]]));
  }
  el.replaceChildren(...parts);
}

// Per second rates of a breaker's totals between the samples kept for it.
function breakerRates(key, totals) {
  const now = Date.now();
  const hist = (state.breakers[key] ||= []);
  if (!hist.length || now - hist.at(-1)[0] > 500) hist.push([now, totals]);
  if (hist.length > 60) hist.shift();
  const rate = (f) => hist.slice(1).map(([t, v], i) => (v[f] - hist[i][1][f]) / Math.max(0.001, (t - hist[i][0]) / 1000));
  return ["success", "failure", "slow", "rejected"].map((f) => ({ name: f, cls: "s-" + f, values: rate(f) }));
}

function gatewayView(g, st) {
  const routes = (st.routes || []).map((r) => {
    const b = r.breaker_stats;
    const state = r.breaker || "none";
    return [r.name, r.upstream, h("span", { class: state === "closed" ? "ok" : state === "none" ? "muted" : "bad", "data-breaker": r.name }, state),
      b ? b.window.failure_rate.toFixed(0) + " %" : "", b ? b.window.slow_rate.toFixed(0) + " %" : "",
      b ? `${b.totals.success} / ${b.totals.failure} / ${b.totals.slow} / ${b.totals.rejected}` : ""];
  });
  const charts = (st.routes || []).filter((r) => r.breaker_stats).map((r) =>
    lines(breakerRates(`${g.id}/${r.name}`, r.breaker_stats.totals), `route ${r.name}: calls per second by outcome`, `${g.id}/${r.name}`));
  const ups = (st.upstreams || []).flatMap((u) => (u.endpoints || []).map((e) => [u.name, e.address,
    h("span", { class: e.healthy ? "ok" : "bad" }, e.healthy ? "healthy" : "unhealthy"),
    e.ejected ? `ejected for ${e.ejected_for_ms} ms` : "no", Number(e.ewma_ms).toFixed(2), e.in_flight, e.requests, e.failures]));
  return [
    h("h3", {}, "Routes and breakers"),
    table(["route", "upstream", "breaker", "failure rate (window)", "slow rate (window)", "success / failure / slow / rejected (total)"], routes),
    ...charts,
    h("h3", {}, "Upstream endpoints"),
    table(["upstream", "endpoint", "health", "ejected", "EWMA ms", "in flight", "requests", "failures"], ups),
    ...(st.errors || []).map((e) => h("p", { class: "error" }, e)),
  ];
}

async function gateways(el) {
  const r = await api("/v1/gateways");
  const list = r.gateways || [];
  const parts = [h("h1", {}, "Gateways")];
  if (!list.length) parts.push(h("p", { class: "muted" }, "No gateway is registered on this store: `weft gateway` with a store, and `weft up --gateway-listen`, register themselves."));
  parts.push(table(["gateway", "listen", "admin API", "pid", "version", "health"], list.map((g) => [g.id, g.listen,
    g.admin || (g.embedded ? "inside this node" : "none"), g.pid ?? "", g.version, h("span", { class: g.health === "passing" ? "ok" : "bad" }, g.health)])));
  for (const g of list) {
    parts.push(h("h2", {}, `Gateway ${g.id}`));
    try {
      parts.push(...gatewayView(g, await api("/v1/gateway/status?id=" + encodeURIComponent(g.id))));
    } catch (e) {
      parts.push(h("p", { class: "error", "data-gateway-error": g.id }, e.message));
    }
  }
  el.replaceChildren(...parts);
}

async function sharding(el) {
  const num = (k, d) => { const v = parseInt(param(k), 10); return Number.isFinite(v) ? v : d; };
  const nodes = num("nodes", 10), keys = num("keys", 20000), add = num("add", 1);
  const f = {
    nodes: h("input", { type: "number", min: 1, max: 1000, value: nodes, "aria-label": "nodes" }),
    keys: h("input", { type: "number", min: 1, max: 1000000, value: keys, "aria-label": "keys" }),
    add: h("input", { type: "number", min: 0, max: 1000, value: add, "aria-label": "nodes added" }),
  };
  const go = h("button", { class: "analyze", onclick: () => { location.hash = `#/sharding?nodes=${f.nodes.value}&keys=${f.keys.value}&add=${f.add.value}`; } }, "Analyze");
  const q = `nodes=${nodes}&keys=${keys}` + (add > 0 ? `&add=${add}` : "");
  const r = await api("/v1/shard/analyze?" + q);
  const an = r.analyses || [];
  const pct = (v) => (v * 100).toFixed(1) + " %";
  el.replaceChildren(h("h1", {}, "Sharding"),
    h("div", { class: "row" }, h("label", {}, "nodes ", f.nodes), h("label", {}, "keys ", f.keys), h("label", {}, "nodes added ", f.add), go),
    h("p", { class: "muted" }, `${keys} keys on ${nodes} nodes` + (add > 0 ? `, then ${add} node(s) added` : "") + " (as `weft shard analyze`)."),
    table(["algorithm", "most loaded / mean", "stddev / mean", "keys moved", "least possible", "lookup ns", "memory"],
      an.map((a) => [a.algo, a.max_over_mean.toFixed(3), a.stddev_over_mean.toFixed(3), a.moved === null ? "" : pct(a.moved),
        a.ideal === null ? "" : pct(a.ideal), a.lookup_ns.toFixed(0), bytes(a.memory_bytes)])),
    ...(add > 0 ? [h("h2", {}, "Keys moved by the change"),
      bars([["least possible", an[0] ? an[0].ideal || 0 : 0], ...an.map((a) => [a.algo, a.moved || 0])], pct)] : []),
    h("h2", {}, "Load per node"),
    h("div", { class: "grid" }, an.map((a) => h("section", { "data-algo": a.algo }, h("h3", {}, a.algo),
      bars(a.loads.map((l) => [l.node, l.keys]), (v) => String(v))))));
}

// Each page: id, title, render, and how it stays current: "poll" renders again every 2 s,
// "watch" renders again when a watched prefix changes, "still" waits for the user.
const PAGES = [
  { id: "overview", title: "Overview", render: overview, mode: "poll" },
  { id: "keys", title: "Keys", render: keys, mode: "still" },
  { id: "leases", title: "Leases", render: leases, mode: "poll" },
  { id: "services", title: "Services", render: services, mode: "watch", prefixes: ["/weft/svc/"] },
  { id: "locks", title: "Locks", render: locks, mode: "watch", prefixes: ["/weft/lock/", "/weft/sem/", "/weft/election/"] },
  { id: "gateways", title: "Gateways", render: gateways, mode: "poll" },
  { id: "sharding", title: "Sharding", render: sharding, mode: "still" },
  { id: "sagas", title: "Sagas", render: sagas, mode: "poll" },
  { id: "queues", title: "Queues", render: queues, mode: "poll" },
  { id: "replication", title: "Replication", render: replication, mode: "poll" },
];

async function route() {
  const id = (location.hash.replace(/^#\//, "").split("?")[0]) || "overview";
  const page = PAGES.find((p) => p.id === id) || PAGES[0];
  const nav = document.getElementById("nav");
  nav.replaceChildren(...PAGES.map((p) => h("a", { href: "#/" + p.id, "aria-current": p.id === page.id ? "page" : undefined }, p.title)));
  const el = document.getElementById("page");
  el.setAttribute("data-page", page.id);
  el.removeAttribute("data-ready");
  el.setAttribute("data-live", "0");
  clearTimeout(state.timer);
  for (const w of state.watches.splice(0)) w.abort();
  const render = async () => {
    try {
      await page.render(el);
      el.removeAttribute("data-error");
    } catch (e) {
      el.setAttribute("data-error", e.message);
      el.replaceChildren(h("h1", {}, page.title), h("p", { class: "error", role: "alert" }, e.message));
    }
    el.setAttribute("data-ready", "1");
    if (page.mode === "poll") state.timer = setTimeout(render, 2000);
  };
  await render();
  for (const prefix of page.prefixes || []) watch(prefix, debounce(render, 100));
}

window.addEventListener("hashchange", route);
route();
