// What the page knows: one store, filled once from the API and kept current by the
// master's events (live.js). Views listen to topics and redraw what concerns them.

const listeners = new Map(); // topic -> Set of callbacks

export function on(topic, callback) {
  if (!listeners.has(topic)) listeners.set(topic, new Set());
  listeners.get(topic).add(callback);
  return () => listeners.get(topic).delete(callback);
}

export function emit(topic, data) {
  for (const callback of listeners.get(topic) || []) {
    try {
      callback(data);
    } catch (error) {
      // One view's bug must not stop the others from hearing the event.
      reportError(error);
    }
  }
}

// Per-second figures over the last minute (the overview's charts), counted from events.
export class Series {
  constructor(seconds = 60) {
    this.seconds = seconds;
    this.values = new Array(seconds).fill(null);
    this.current = [];
  }

  add(value) {
    this.current.push(value);
  }

  // Closes the second: `summary` turns its values into one figure (count, median).
  roll(summary) {
    this.values.push(summary(this.current));
    this.values.shift();
    this.current = [];
  }
}

export const count = (values) => values.length;
export function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

export const NOTABLE_KEEP = 50;

export const state = {
  session: null, // GET /session
  connection: "connecting", // connecting | live | reconnecting | signed_out
  connectionNote: "",
  status: null, // GET /status
  health: null, // GET /healthz, then `health` events
  workers: new Map(), // id -> GET /workers/{id}
  workersReadAt: 0, // when the figures not carried by events (RSS, heartbeat) were last read
  accounts: new Map(), // id -> GET /accounts/{id}
  notable: [], // the last errors and exits, newest first: {id, at, what, text, level}
  itemsPerSecond: new Series(),
  syncLatency: new Series(), // a new inbound message: its sent_at -> committed (ms), median
  stopping: null, // the master said it is stopping (reason)
};

// When each worker object was read from the API: its heartbeat age was that old then, and
// grows by the time since (until the worker is read again).
const readAt = new WeakMap();

export function putWorker(worker, at = Date.now()) {
  readAt.set(worker, at);
  state.workers.set(worker.id, worker);
  state.workersReadAt = Math.max(state.workersReadAt, at);
}

export const readTime = (worker) => readAt.get(worker) || 0;

// The age of the last heartbeat the page knows of, now: as read, plus the time since.
export function heartbeatAge(worker, now = Date.now()) {
  if (worker.heartbeat_age_s === null || worker.heartbeat_age_s === undefined) return null;
  const at = readAt.get(worker);
  return worker.heartbeat_age_s + (at ? Math.max(0, now - at) / 1000 : 0);
}

export function setConnection(connection, note = "") {
  state.connection = connection;
  state.connectionNote = note;
  emit("connection", state);
}

export function addNotable(entry) {
  if (entry.id !== null && state.notable.some((n) => n.id === entry.id)) return;
  state.notable.unshift(entry);
  state.notable.sort((a, b) => (b.at || 0) - (a.at || 0));
  state.notable.length = Math.min(state.notable.length, NOTABLE_KEEP);
  emit("notable", state.notable);
}
