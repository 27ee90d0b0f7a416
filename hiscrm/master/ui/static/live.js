// Keeping the page current: the state is read once from the API, then follows the
// master's events (GET /api/v1/events, one EventSource). Nothing polls: figures that
// events do not carry (a worker's RSS, its heartbeat age) are read again when an event
// concerns that worker or account (meanwhile a heartbeat age grows with the clock). After a reconnect, or an `event: reset`, the state is
// read again whole; the stream itself resumes after its last event (Last-Event-ID).

import * as api from "./api.js";
import { addNotable, count, emit, median, putWorker, setConnection, state } from "./state.js";

const ITEM_KINDS = ["conversation", "message", "comment", "content", "notification"];
const OPERATOR_REASONS = new Set(["stop", "restart", "shutdown", "reload"]);
const TROUBLED_ACCOUNT = new Set(["backoff", "down", "failed", "quarantined", "unassigned"]);
const LIVE_LATENCY_MS = 60_000; // older messages are history caught up, not sync latency
const NOTABLE_TYPES = "worker.exit,account,health,reply.state,reload";
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

let source = null;
let lastEventId = null;
let broken = false; // the stream was lost since the state was last read
let retries = 0;
let loading = null;
let missed = []; // state events heard while the state was being read: applied again after

export async function start() {
  setInterval(tick, 1000); // rolls the per-second figures; reads nothing
  openStream();
  await reload();
}

function tick() {
  state.itemsPerSecond.roll(count);
  state.syncLatency.roll(median);
  emit("tick", Date.now());
}

// The whole state, read again (at start, after a reconnect, on `reset`).
export function reload() {
  if (!loading) missed = [];
  loading ??= readState().finally(() => {
    loading = null;
  });
  return loading;
}

async function readState() {
  const [status, workers, accounts, past] = await Promise.all([
    api.get("/status"),
    api.all("/workers"),
    api.all("/accounts"),
    api.pastEvents({ types: NOTABLE_TYPES, last: 100 }).catch(() => []),
  ]);
  state.status = status;
  state.health = await readHealth(status, past);
  state.stopping = status.shutting_down ? "shutting down" : null;
  emit("connection", state);
  const readAt = Date.now();
  state.workers = new Map();
  for (const w of workers) putWorker(w, readAt);
  state.accounts = new Map(accounts.map((a) => [a.id, a]));
  // What changed while the state was read may be older in the answers than in the events:
  // the events are applied again (and what they concern read again).
  for (const [name, data] of missed.splice(0)) APPLY[name]?.(data);
  for (const event of past) notice(event.name, event.data, event.id);
  emit("workers", state.workers);
  emit("accounts", state.accounts);
  emit("health", state.health);
  emit("reload", state);
}

// The health with its checks, from /healthz; but a failing master answers it with a 503,
// which the browser reports as an error: then from the last `health` event (the status
// says it is failing).
async function readHealth(status, past) {
  if (status.health !== "failing") {
    try {
      return await api.get("/healthz");
    } catch (error) {
      if (error.status === 503 && error.body) return error.body; // failing since
      throw error;
    }
  }
  const last = past.filter((event) => event.name === "health").pop()?.data;
  if (last && last.status === "failing") return last;
  return { status: "failing", checks: { health: { status: "failing", detail: "details at /healthz" } } };
}

// --- the stream ------------------------------------------------------------------------

function openStream() {
  const url = `${api.API}/events${lastEventId === null ? "" : api.query({ after: lastEventId })}`;
  source = new EventSource(url);
  source.onopen = () => {
    retries = 0;
    setConnection("live");
    if (broken) {
      broken = false;
      reload().catch(failed);
    }
  };
  source.onerror = () => {
    broken = true;
    if (source.readyState === EventSource.CLOSED) {
      // Refused, not just dropped: signed out, or too many streams. Find out which.
      api
        .loadSession()
        .then(() => retryLater("the event stream was refused; trying again"))
        .catch((error) => {
          if (error.status !== 401) retryLater(`cannot reach the master (${error.message})`);
        });
    } else {
      setConnection("reconnecting", "lost the master; reconnecting");
    }
  };
  for (const kind of ITEM_KINDS) listen(`item.${kind}`, (data) => onItem(kind, data));
  for (const name of ["worker.state", "worker.exit", "worker.removed", "account.state", "account.stale",
    "account.quarantined", "account.released", "account.removed", "health", "reply.state", "reload.started",
    "reload.ended", "master.stopping"]) {
    listen(name, (data, id) => {
      if (loading) missed.push([name, data]);
      APPLY[name]?.(data);
      notice(name, data, id);
      emit(name, data);
    });
  }
  source.addEventListener("reset", () => reload().catch(failed));
  source.addEventListener("cutoff", (event) => {
    setConnection("reconnecting", `the master cut the stream off: ${JSON.parse(event.data).reason}`);
  });
}

function retryLater(note) {
  source?.close();
  setConnection("reconnecting", note);
  const delay = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
  retries += 1;
  setTimeout(openStream, delay);
}

export function stopStream() {
  source?.close();
}

function listen(name, handle) {
  source.addEventListener(name, (event) => {
    if (event.lastEventId) lastEventId = Number(event.lastEventId);
    handle(JSON.parse(event.data), lastEventId);
  });
}

function failed(error) {
  setConnection("reconnecting", `reading the state failed: ${error.message}`);
}

// --- what each event changes -----------------------------------------------------------

const APPLY = {
  "worker.state": (data) => {
    const worker = state.workers.get(data.worker);
    if (worker) Object.assign(worker, { state: data.state, pid: data.pid });
    emit("workers", state.workers);
    refresh("workers", data.worker);
  },
  "worker.exit": (data) => refresh("workers", data.worker),
  "worker.removed": (data) => removed("workers", data.worker),
  "account.state": (data) => {
    if (deleted.has(`accounts/${data.account_id}`)) return;
    const account = state.accounts.get(data.account_id);
    if (account) Object.assign(account, { state: data.state, reason: data.reason, worker: data.worker });
    emit("accounts", state.accounts);
    refresh("accounts", data.account_id);
  },
  "account.stale": (data) => {
    const account = state.accounts.get(data.account_id);
    if (account) account.stale = data.stale;
    emit("accounts", state.accounts);
  },
  "account.quarantined": (data) => refresh("accounts", data.account_id),
  "account.released": (data) => refresh("accounts", data.account_id),
  // Gone (deleted here or elsewhere, or taken out of the config file): not read again.
  "account.removed": (data) => removed("accounts", data.account_id),
  health: (data) => {
    state.health = data;
    emit("health", data);
  },
  "master.stopping": (data) => {
    state.stopping = data.reason;
    emit("connection", state);
  },
};

function onItem(kind, item) {
  state.itemsPerSecond.add(1);
  if (kind === "message" && item.direction === "inbound" && item.version === 1) {
    const latency = item.synced_at - item.sent_at;
    if (latency >= 0 && latency <= LIVE_LATENCY_MS) state.syncLatency.add(latency);
  }
  const account = state.accounts.get(item.account_id);
  if (account && item.synced_at > (account.last_item_at || 0)) account.last_item_at = item.synced_at;
  // An upsert is progress too (the master's figure is read again with the account).
  if (account && item.synced_at > (account.progress_at || 0)) account.progress_at = item.synced_at;
  emit("item", { kind, item });
}

// Reads the workers or the accounts again, each as one list: one read at a time each,
// repeated once if another event came meanwhile (a burst of events costs two reads, not
// one per event), and something gone meanwhile is left out, never a 404 (which the
// browser would report as an error).
const reading = new Map();
// What this page deletes: from the moment it asks, it is not put back by a read under
// way. Undone if the deletion fails.
const deleted = new Set();

export function deleting(collection, id) {
  deleted.add(`${collection}/${id}`);
}

export function deletionFailed(collection, id) {
  deleted.delete(`${collection}/${id}`);
  refresh(collection, id);
}

// The master says it is gone: forgotten, and a read under way is made again (it may have
// listed it); one made again with the same id is read as any new one.
function removed(collection, id) {
  const running = reading.get(collection);
  if (running) running.again = true;
  deleted.delete(`${collection}/${id}`);
  forget(collection, id);
}

export function forget(collection, id) {
  const map = collection === "workers" ? state.workers : state.accounts;
  map.delete(id);
  emit(collection, map);
}

export function known(collection, id) {
  deleted.delete(`${collection}/${id}`);
}

async function readWorkers(signal) {
  const workers = await api.all("/workers", { signal });
  const at = Date.now();
  const listed = new Set(workers.map((w) => w.id));
  for (const id of [...state.workers.keys()]) if (!listed.has(id)) state.workers.delete(id);
  for (const w of workers) putWorker(w, at);
}

async function readAccounts(signal) {
  const accounts = await api.all("/accounts", { signal });
  const listed = new Set(accounts.map((a) => a.id));
  for (const id of [...state.accounts.keys()]) if (!listed.has(id)) state.accounts.delete(id);
  for (const a of accounts) if (!deleted.has(`accounts/${a.id}`)) state.accounts.set(a.id, a);
}

export function refresh(collection, id) {
  // A master that is stopping answers no more reads; its events still say what changes, and
  // the whole state is read again when it is back.
  if (deleted.has(`${collection}/${id}`) || state.stopping) return;
  const running = reading.get(collection);
  if (running) {
    running.again = true;
    return;
  }
  const run = { again: true, controller: new AbortController() };
  reading.set(collection, run);
  (async () => {
    while (run.again) {
      run.again = false;
      const map = collection === "workers" ? state.workers : state.accounts;
      const signal = run.controller.signal;
      try {
        if (collection === "workers") await readWorkers(signal);
        else await readAccounts(signal);
      } catch (error) {
        if (error.name === "AbortError") break;
        if (error.status !== 401) setConnection(state.connection, `reading ${collection} failed: ${error.message}`);
      }
      emit(collection, map);
    }
    reading.delete(collection);
  })();
}

// --- the last errors: what in the events deserves an operator's eye ---------------------

function notice(name, data, id) {
  const at = data.at || Date.now();
  const add = (level, what, text) => addNotable({ id, at, level, what, text });
  switch (name) {
    case "worker.exit": {
      const how = data.signal ? `signal ${data.signal}` : `code ${data.code}`;
      const level = OPERATOR_REASONS.has(data.reason) ? "info" : "error";
      add(level, data.worker, `pid ${data.pid} exited (${data.reason}, ${how}): ${data.detail}`);
      break;
    }
    case "account.state":
      if (TROUBLED_ACCOUNT.has(data.state)) add("warning", data.account_id, `${data.state}: ${data.reason}`);
      break;
    case "account.stale":
      if (data.stale) add("warning", data.account_id, "stale: no progress for stale_after_s");
      break;
    case "account.quarantined":
      add("error", data.account_id, `quarantined: runs alone on ${data.worker}`);
      break;
    case "account.released":
      add("info", data.account_id, `released from quarantine (${data.by})`);
      break;
    case "health":
      if (data.status !== "ok") {
        const why = Object.entries(data.checks)
          .filter(([, check]) => check.status !== "ok")
          .map(([name, check]) => `${name}: ${check.detail}`)
          .join("; ");
        add(data.status === "failing" ? "error" : "warning", "health", `${data.status}: ${why}`);
      } else {
        add("info", "health", "ok again");
      }
      break;
    case "reply.state":
      if (["failed", "unknown", "expired"].includes(data.state)) {
        add("warning", data.account_id, `reply ${data.request_id} ${data.state}: ${data.error || ""}`);
      }
      break;
    case "reload.started":
      add("info", "reload", `rolling reload started (${data.why})`);
      break;
    case "reload.ended":
      add(data.error ? "error" : "info", "reload", data.error ? `reload failed: ${data.error}` : "reload done");
      break;
    default:
      break;
  }
}
