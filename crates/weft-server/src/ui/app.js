// weft's dashboard: one page per pattern, each a function that renders from the node's HTTP
// API (the calls are in /openapi.json). A page is added in one place: the PAGES list.
"use strict";

const state = { token: sessionStorage.getItem("weft-token"), timer: null, samples: [] };

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

function askToken() {
  return new Promise((resolve) => {
    const d = document.getElementById("token-dialog");
    const form = document.getElementById("token-form");
    form.onsubmit = () => {
      state.token = document.getElementById("token").value;
      sessionStorage.setItem("weft-token", state.token);
      resolve();
    };
    d.showModal();
  });
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
function table(cols, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
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

/// A query parameter of the page's hash (`#/keys?prefix=a/&key=a/b`).
function param(name) {
  const q = location.hash.split("?")[1] || "";
  const v = new URLSearchParams(q).get(name);
  return v === null ? "" : v;
}

// Pages.
/// A counter's value from the node's Prometheus text.
function counter(text, name) {
  const line = String(text).split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.split(" ")[1]) : 0;
}

async function overview(el) {
  const s = await api("/v1/status");
  const metrics = await api("/metrics").catch(() => "");
  const now = Date.now(), rev = Number(s.header.revision);
  state.samples.push([now, rev, counter(metrics, "weft_log_durable_writes_total")]);
  state.samples = state.samples.slice(-60);
  const rate = (k) => state.samples.slice(1).map((x, i) => (x[k] - state.samples[i][k]) / Math.max(0.001, (x[0] - state.samples[i][0]) / 1000));
  const rates = rate(1), fsyncs = rate(2);
  el.replaceChildren(h("h1", {}, "Overview"),
    h("div", { class: "cards" }, card("revision", rev), card("compact revision", s.compact_revision),
      card("size", bytes(Number(s.db_size))), card("version", s.version)),
    h("h2", {}, "Writes per second"), chart(rates.length ? rates : [0]),
    h("h2", {}, "Log fsyncs per second"), chart(fsyncs.length ? fsyncs : [0]));
}

async function keys(el) {
  const prefix = param("prefix");
  const r = await api("/v1/kv/range", { key: btoa(prefix), prefix: true, encoding: "base64", limit: 500 });
  const input = h("input", { type: "search", value: prefix, "aria-label": "key prefix", placeholder: "prefix" });
  const detail = h("div", { id: "key-detail" });
  const go = h("button", { onclick: () => { location.hash = "#/keys?prefix=" + encodeURIComponent(input.value); } }, "List");
  const rows = (r.kvs || []).map((kv) => {
    const name = atob(kv.key);
    return [h("a", { href: "javascript:void 0", onclick: () => openKey(detail, kv) }, name), kv.version, kv.mod_revision, kv.lease || ""];
  });
  el.replaceChildren(h("h1", {}, "Keys"), h("div", { class: "row" }, input, go),
    h("p", { class: "muted" }, `${r.count} keys at revision ${r.header.revision}`),
    table(["key", "version", "mod revision", "lease"], rows), detail);
  // A key named in the address opens at once (`#/keys?prefix=a/&key=a/b`).
  const want = param("key");
  const kv = (r.kvs || []).find((k) => atob(k.key) === want);
  if (kv) await openKey(detail, kv);
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
  const text = h("textarea", { rows: 6, cols: 60, "aria-label": "new value" }, showValue(kv.value));
  const out = h("p", { class: "error", role: "status" });
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
  el.replaceChildren(h("h2", {}, name),
    table(["create revision", "mod revision", "version", "lease"], [[kv.create_revision, kv.mod_revision, kv.version, kv.lease || "none"]]),
    h("pre", {}, showValue(kv.value)), text,
    h("div", { class: "row" }, h("button", { onclick: save }, "Save"), h("button", { onclick: del }, "Delete")), out,
    h("h2", {}, "History"), table(["mod revision", "version", "value"], await history(kv)));
}

async function leases(el) {
  const r = await api("/v1/lease/list");
  const rows = [];
  for (const id of (r.leases || []).slice(0, 200)) {
    const t = await api("/v1/lease/ttl", { id, keys: true }).catch(() => null);
    rows.push([String(id), t ? t.ttl : "?", t ? t.granted_ttl : "?", t && t.keys ? t.keys.join(", ") : ""]);
  }
  el.replaceChildren(h("h1", {}, "Leases"), table(["id", "TTL left", "granted TTL", "keys"], rows));
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
    return [svc, id, inst.address || "", h("span", { class: health === "passing" ? "ok" : "bad" }, health), (inst.tags || []).join(", ")];
  });
  el.replaceChildren(h("h1", {}, "Services"), table(["service", "instance", "address", "health", "tags"], rows));
}

async function locks(el) {
  const groups = async (prefix) => {
    const by = {};
    for (const { key, kv } of await prefixed(prefix)) {
      const i = key.lastIndexOf("/");
      (by[key.slice(0, i)] ||= []).push({ lease: key.slice(i + 1), kv });
    }
    return Object.entries(by).map(([name, ks]) => {
      ks.sort((a, b) => a.kv.create_revision - b.kv.create_revision);
      return [name, ks[0].lease, ks[0].kv.create_revision, ks.slice(1).map((k) => k.lease).join(", ") || "none", showValue(ks[0].kv.value)];
    });
  };
  el.replaceChildren(h("h1", {}, "Locks and elections"),
    h("h2", {}, "Locks"), table(["name", "holder lease", "fencing token", "waiters in order", ""], await groups("/weft/lock/")),
    h("h2", {}, "Elections"), table(["name", "leader lease", "term", "candidates in order", "value"], await groups("/weft/election/")));
}

async function sagas(el) {
  const r = await api("/v1/saga/list").catch((e) => ({ error: e.message }));
  if (r.error) return el.replaceChildren(h("h1", {}, "Sagas"), h("p", { class: "error" }, r.error));
  const list = r.sagas || [];
  el.replaceChildren(h("h1", {}, "Sagas"), table(["id", "name", "status", "updated"], list.map((s) => [s.id, s.name || "", s.status, s.updated_ms ? new Date(s.updated_ms).toISOString() : ""])));
}

async function queues(el) {
  const r = await api("/v1/queue/topics").catch((e) => ({ error: e.message }));
  if (r.error) return el.replaceChildren(h("h1", {}, "Queues"), h("p", { class: "error" }, r.error));
  const topics = r.topics || r;
  const rows = (Array.isArray(topics) ? topics : []).map((t) => [t.name, (t.partitions || []).length,
    (t.partitions || []).reduce((a, p) => a + (p.end - p.start), 0), (t.groups || []).map((g) => g.name || g).join(", ")]);
  el.replaceChildren(h("h1", {}, "Queues"), table(["topic", "partitions", "messages", "groups"], rows));
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

const PAGES = [
  ["overview", "Overview", overview],
  ["keys", "Keys", keys],
  ["leases", "Leases", leases],
  ["services", "Services", services],
  ["locks", "Locks", locks],
  ["sagas", "Sagas", sagas],
  ["queues", "Queues", queues],
  ["replication", "Replication", replication],
];

async function route() {
  const id = (location.hash.replace(/^#\//, "").split("?")[0]) || "overview";
  const page = PAGES.find((p) => p[0] === id) || PAGES[0];
  const nav = document.getElementById("nav");
  nav.replaceChildren(...PAGES.map(([pid, title]) => h("a", { href: "#/" + pid, "aria-current": pid === page[0] ? "page" : undefined }, title)));
  const el = document.getElementById("page");
  el.setAttribute("data-page", page[0]);
  clearTimeout(state.timer);
  const render = async () => {
    try {
      await page[2](el);
      el.removeAttribute("data-error");
    } catch (e) {
      el.setAttribute("data-error", e.message);
      el.replaceChildren(h("h1", {}, page[1]), h("p", { class: "error", role: "alert" }, e.message));
    }
    el.setAttribute("data-ready", "1");
    // Live pages refresh; the keys page waits for the user (an edit in progress stays).
    if (page[0] !== "keys") state.timer = setTimeout(render, 2000);
  };
  await render();
}

window.addEventListener("hashchange", route);
route();
