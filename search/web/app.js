// The search page: everything it shows comes from the JSON API on this server; the URL holds the
// whole view (index, query or clip, filters, page), so a link reproduces it.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = { q: "q", index: "index", dmin: "dmin", dmax: "dmax", sub: "sub", cap: "cap", col: "col", val: "val", per: "per" };
let state = {};

function readURL() {
  const p = new URLSearchParams(location.search);
  return {
    q: p.get("q") || "", like: p.get("like") || "", index: p.get("index") || "", dmin: p.get("dmin") || "",
    dmax: p.get("dmax") || "", sub: p.get("sub") || "", cap: p.get("cap") || "", col: p.get("col") || "",
    val: p.get("val") || "", fold: p.get("fold") === "1", per: p.get("per") || "24",
    page: Math.max(1, parseInt(p.get("page") || "1", 10) || 1),
  };
}

function writeURL(s, push) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(s)) {
    if (k === "fold") { if (v) p.set("fold", "1"); continue; }
    if (k === "page") { if (v > 1) p.set("page", String(v)); continue; }
    if (v !== "" && v !== null && v !== undefined) p.set(k, String(v));
  }
  const url = location.pathname + (p.toString() ? "?" + p.toString() : "");
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

function toControls(s) {
  for (const [k, id] of Object.entries(FIELDS)) { if (s[k] !== undefined) $(id).value = s[k]; }
  $("fold").checked = !!s.fold;
}

function fromControls(base) {
  const s = { ...base };
  for (const [k, id] of Object.entries(FIELDS)) s[k] = $(id).value.trim();
  s.fold = $("fold").checked;
  return s;
}

function filtersOf(s) {
  const f = {};
  if (s.dmin !== "") f.duration_min = parseFloat(s.dmin);
  if (s.dmax !== "") f.duration_max = parseFloat(s.dmax);
  if (s.sub) f.subtitle = s.sub;
  if (s.cap) f.caption = s.cap;
  if (s.col && s.val !== "") f.columns = { [s.col]: s.val };
  return f;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function playInPlace(media, r) {
  if (media.querySelector("video")) return;
  const v = el("video", { controls: "", autoplay: "", playsinline: "", preload: "auto" });
  v.muted = true;  // browsers let muted video autoplay
  v.src = r.clip;
  media.replaceChildren(v);
  v.play().catch(() => {});
}

function card(r, rank) {
  const media = el("div", { class: "media", title: "play" },
    el("img", { src: r.thumb, alt: r.caption || r.key, loading: "lazy" }), el("span", { class: "play" }, "\u25B6"));
  media.addEventListener("click", () => playInPlace(media, r));
  const body = el("div", { class: "body" },
    el("span", { class: "score" }, r.score.toFixed(3)),
    el("div", { class: "key" }, `${rank}. ${r.key}` + (r.duration != null ? ` \u00B7 ${r.duration.toFixed(1)} s` : "")),
    el("div", { class: "sub" }, r.subtitle ? "\u201C" + r.subtitle + "\u201D" : ""),
    el("div", { class: "cap" }, r.caption || ""),
    el("div", { class: "dups" }, r.duplicates.length ? `+${r.duplicates.length} near-duplicate(s)` : ""));
  const like = el("button", { class: "like", type: "button" }, "more like this");
  like.addEventListener("click", () => go({ ...state, q: "", like: r.key, page: 1 }, true));
  return el("div", { class: "card", "data-key": r.key, "data-caption": r.caption || "", "data-duration": r.duration ?? "" },
    media, body, like);
}

async function run() {
  const s = state;
  const grid = $("grid");
  if (!s.q && !s.like) { grid.replaceChildren(); $("status").textContent = "Type a query."; $("pager").hidden = true; return; }
  const per = parseInt(s.per, 10) || 24;
  const body = { index: s.index || undefined, k: per, offset: (s.page - 1) * per, filters: filtersOf(s), fold: s.fold };
  if (s.like) body.key = s.like; else body.text = s.q;
  $("status").textContent = "Searching\u2026";
  let resp, data;
  try {
    resp = await fetch("/api/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    data = await resp.json();
  } catch (e) { $("status").textContent = "The server did not answer: " + e; return; }
  if (!resp.ok) { $("status").textContent = data.error || resp.statusText; grid.replaceChildren(); return; }
  grid.replaceChildren(...data.results.map((r, i) => card(r, data.offset + i + 1)));
  const what = s.like ? `clips like ${s.like}` : `\u201C${s.q}\u201D`;
  $("status").textContent = data.results.length
    ? `${what}: results ${data.offset + 1}\u2013${data.offset + data.results.length} in ${data.index}`
    : `${what}: no results with these filters`;
  $("pager").hidden = false;
  $("prev").disabled = s.page <= 1;
  $("next").disabled = !data.has_more;
  $("pageno").textContent = `page ${s.page}`;
  grid.dataset.ready = String(Date.now());
}

function go(s, push) {
  state = s;
  toControls(s);
  writeURL(s, push);
  run();
}

async function init() {
  const info = await (await fetch("/api/indices")).json();
  const s = readURL();
  $("index").replaceChildren(...info.indices.map((x) => el("option", { value: x.name }, `${x.name} (${x.count})`)));
  const current = info.indices.find((x) => x.name === s.index) || info.indices[0];
  s.index = current.name;
  $("col").replaceChildren(el("option", { value: "" }, "column"), ...current.filter_columns.map((c) => el("option", { value: c }, c)));
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); go({ ...fromControls(state), like: "", page: 1 }, true); });
  $("apply").addEventListener("click", () => go({ ...fromControls(state), page: 1 }, true));
  $("clear").addEventListener("click", () => go({ ...state, dmin: "", dmax: "", sub: "", cap: "", col: "", val: "", fold: false, page: 1 }, true));
  $("prev").addEventListener("click", () => go({ ...state, page: Math.max(1, state.page - 1) }, true));
  $("next").addEventListener("click", () => go({ ...state, page: state.page + 1 }, true));
  window.addEventListener("popstate", () => go(readURL(), false));
  go(s, false);
}

init();
