// The master's API, as the page uses it: same origin, the session cookie, and the
// session's CSRF token on every write.

export const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, error, detail, body = null) {
    super(error);
    this.status = status;
    this.detail = detail;
    this.body = body; // the whole answer (e.g. /healthz's when failing)
  }
}

const session = { csrf: null, onSignedOut: () => {} };

export function onSignedOut(callback) {
  session.onSignedOut = callback;
}

// How this page is let in: {auth, csrf_token, expires_at, session}.
export async function loadSession() {
  const info = await request("GET", "/session");
  session.csrf = info.csrf_token;
  return info;
}

export async function request(method, path, body, { signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    signal,
  });
  let answer = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("application/json")) answer = await response.json();
  else await response.text();
  if (response.status === 401) {
    session.onSignedOut(answer?.error || "not signed in");
  }
  if (!response.ok) {
    const error = answer?.error || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, error, answer?.detail, answer);
  }
  return answer;
}

export const get = (path, options) => request("GET", path, undefined, options);
export const post = (path, body) => request("POST", path, body);
export const patch = (path, body) => request("PATCH", path, body);
export const del = (path) => request("DELETE", path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) q.set(key, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

export const seg = (id) => encodeURIComponent(id);

// Every item of a paged list (accounts, workers).
export async function all(path, options) {
  const items = [];
  for (;;) {
    const page = await get(`${path}${query({ limit: 1000, offset: items.length })}`, options);
    items.push(...page.items);
    if (!page.items.length || items.length >= page.total) return items;
  }
}

// A streamed text answer (a log followed), line by line, until `signal` aborts it.
export async function streamLines(path, onLines, signal) {
  const response = await fetch(API + path, { credentials: "same-origin", signal, cache: "no-store" });
  if (response.status === 401) session.onSignedOut("not signed in");
  if (!response.ok) {
    let error = `${response.status}`;
    try {
      error = (await response.json()).error;
    } catch {
      // not JSON: the status says it
    }
    throw new ApiError(response.status, error);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let partial = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const lines = (partial + value).split("\n");
    partial = lines.pop();
    if (lines.length) onLines(lines);
  }
  if (partial) onLines([partial]);
}

// The events that happened already (not followed): e.g. the last errors at load.
export async function pastEvents(params) {
  const response = await fetch(`${API}/events${query({ ...params, follow: "false" })}`, {
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) throw new ApiError(response.status, `events: ${response.status}`);
  const events = [];
  for (const block of (await response.text()).split("\n\n")) {
    let name = "message";
    let data = "";
    let id = null;
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
      else if (line.startsWith("id: ")) id = Number(line.slice(4));
    }
    if (data) events.push({ id, name, data: JSON.parse(data) });
  }
  return events;
}
