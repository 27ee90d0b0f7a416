// Building and updating the page's elements, and formatting figures for people.
// Text always goes in as text (never as HTML): what platforms send is shown, not run.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function svg(tag, attrs = {}) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  return el;
}

// Replaces an element's content, only if it changed (keeps focus and selection elsewhere).
export function fill(el, ...children) {
  const key = JSON.stringify(children.flat(Infinity).map((c) => (c instanceof Node ? c.outerHTML : c)));
  if (el._filled === key) return;
  el._filled = key;
  el.replaceChildren();
  append(el, children);
}

export function text(el, value) {
  const s = value === null || value === undefined ? "" : String(value);
  if (el.textContent !== s) el.textContent = s;
}

// Keeps a table body's rows in step with a list: one row per key, made once by `make`
// (which returns the row and whatever `update` needs), updated in place, reordered and
// removed as the list says. Focus in a row that stays survives the update.
export function syncRows(tbody, items, keyOf, make, update) {
  tbody._rows ??= new Map();
  const rows = tbody._rows;
  const wanted = new Set();
  let previous = null;
  for (const item of items) {
    const key = keyOf(item);
    wanted.add(key);
    let row = rows.get(key);
    if (!row) {
      row = make(item);
      rows.set(key, row);
    }
    update(row, item);
    const expected = previous ? previous.el.nextSibling : tbody.firstChild;
    if (expected !== row.el) tbody.insertBefore(row.el, expected);
    previous = row;
  }
  for (const [key, row] of rows) {
    if (!wanted.has(key)) {
      row.el.remove();
      rows.delete(key);
    }
  }
}

export function badge(value, extra = "") {
  return h("span", { class: `badge state-${String(value).replace(/[^a-z_]/gi, "")} ${extra}` }, value);
}

// --- figures ---------------------------------------------------------------------------

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function ago(ms, now = Date.now()) {
  if (!ms) return "never";
  return `${duration((now - ms) / 1000)} ago`;
}

export function clock(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit ? 1 : 0)} ${units[unit]}`;
}

export function byReason(counts) {
  const parts = Object.entries(counts || {}).map(([reason, n]) => `${reason} ${n}`);
  return parts.length ? parts.join(", ") : "";
}

// A request id the outbox accepts ([A-Za-z0-9][A-Za-z0-9._:-]*): random, from the
// browser's generator (crypto.randomUUID needs a secure context; this does not).
export function requestId(prefix = "ui") {
  const random = crypto.getRandomValues(new Uint8Array(12));
  return `${prefix}-${Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}
