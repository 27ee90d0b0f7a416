// Workers: each in detail, its live log, its last exit; start, stop, restart, reload,
// update, each showing its progress (from the worker's events) and its answer.

import * as api from "../api.js";
import { badge, byReason, bytes, clock, duration, fill, h, text } from "../dom.js";
import { act } from "../notice.js";
import { heartbeatAge, on, putWorker, readTime, state } from "../state.js";

const LOG_KEEP = 2000; // lines kept in the page
const LOG_TAIL = 200; // lines read first
const SETTLE_MS = 3000; // an action's answer waits this long at most for its events

export function mount(main, [selected]) {
  const list = h("ul", { class: "worker-list" });
  const detail = h("div", { class: "worker-detail" });
  const answer = h("section", { class: "answer", "aria-live": "polite" });
  const reloadButton = h("button", { type: "button", onclick: () => reloadAll(reloadButton) }, "Reload all workers");
  const updateButton = h("button", { type: "button", onclick: () => update(updateButton) }, "Update from config file");
  main.replaceChildren(
    h("h1", {}, "Workers"),
    h("div", { class: "toolbar" }, reloadButton, updateButton),
    answer,
    h("div", { class: "split" }, h("nav", { "aria-label": "Workers" }, list), detail),
  );

  let current = null; // the worker shown
  let view = null;

  function drawList() {
    const workers = [...state.workers.values()];
    const id = selected && state.workers.has(selected) ? selected : workers[0]?.id;
    fill(list, ...workers.map((w) => h("li", {},
      h("a", { href: `#/workers/${encodeURIComponent(w.id)}`, "aria-current": w.id === id ? "page" : false },
        w.id, " ", badge(w.state)))));
    if (id !== current) {
      view?.close();
      current = id;
      view = id ? workerView(detail, id) : null;
      if (!id) detail.replaceChildren(h("p", { class: "muted" }, "No workers."));
    }
    view?.draw();
  }

  async function reloadAll(button) {
    fill(answer, h("p", {}, "Reloading: each worker is replaced in turn…"));
    const result = await act(button, () => api.post("/reload"));
    if (!result) return fill(answer);
    fill(answer,
      h("h2", {}, result.complete ? `Reload complete in ${result.took_s.toFixed(2)} s` : `Reload stopped: ${result.error || "not every worker was replaced"}`),
      h("ul", {}, result.steps.map((s) => h("li", {},
        `${s.worker}: pid ${s.old_pid ?? "–"} → ${s.new_pid ?? "no new process"} (${s.state}) in ${s.took_s.toFixed(2)} s, ${s.accounts} accounts`,
        s.max_gap_ms ? `, longest gap ${Math.round(s.max_gap_ms)} ms` : ""))));
  }

  async function update(button) {
    const result = await act(button, () => api.post("/config/update"));
    if (!result) return;
    const accounts = result.accounts;
    const lines = ["added", "changed", "removed"].filter((k) => accounts[k].length)
      .map((k) => h("li", {}, `accounts ${k}: ${accounts[k].join(", ")}`));
    for (const id of accounts.conflicts) lines.push(h("li", { class: "level-warning" }, `${id}: made through the API; the file's declaration is left out`));
    for (const change of result.settings) {
      lines.push(h("li", {}, h("code", {}, change.key), `: ${JSON.stringify(change.old)} → ${JSON.stringify(change.new)} (${change.applies})`));
    }
    if (result.restart_needed.length) lines.push(h("li", { class: "level-warning" }, `restart the master to apply: ${result.restart_needed.join(", ")}`));
    fill(answer, h("h2", {}, `Updated from ${result.source}`), h("ul", {}, lines.length ? lines : [h("li", {}, "nothing changed")]));
  }

  drawList();
  const off = [on("workers", drawList), on("tick", () => view?.draw()), on("reload", () => view?.resume())];
  return () => {
    off.forEach((f) => f());
    view?.close();
  };
}

function workerView(root, id) {
  const title = h("h2", {}, id, " ");
  const stateBadge = h("span");
  const buttons = Object.fromEntries(["start", "stop", "restart"].map((action) =>
    [action, h("button", { type: "button", dataset: { action }, onclick: () => run(action) }, action[0].toUpperCase() + action.slice(1))]));
  const progress = h("ol", { class: "progress", "aria-live": "polite", "aria-label": "Progress" });
  const facts = h("dl", { class: "facts" });
  const exit = h("section", { class: "exit" });
  const logBox = h("pre", { class: "log", tabindex: "0", "aria-label": `${id} log` });
  const logState = h("span", { class: "muted small" });
  title.append(stateBadge);
  root.replaceChildren(
    h("header", { class: "detail-head" }, title, h("div", { class: "actions" }, ...Object.values(buttons))),
    progress, facts, exit,
    h("section", {}, h("h3", {}, "Log ", logState), logBox),
  );

  // The action under way: its progress listens to the worker's events, and what they
  // said last (the state, the exits) tells when the action has settled.
  let acting = null;
  const offState = on("worker.state", (data) => {
    if (!acting || data.worker !== id) return;
    step(`${data.state}${data.pid ? ` (pid ${data.pid})` : ""}: ${data.reason}`);
    acting.last = { state: data.state, pid: data.pid ?? null };
    acting.check();
  });
  const offExit = on("worker.exit", (data) => {
    if (!acting || data.worker !== id) return;
    step(`pid ${data.pid} exited: ${data.reason}`);
    acting.exited.add(data.pid);
    acting.check();
  });

  function step(line) {
    progress.append(h("li", {}, h("time", {}, clock(Date.now())), " ", line));
  }

  // The answer can come before the events that tell the same steps (they come on the
  // event stream): they are awaited, SETTLE_MS at most, so the steps show in order and
  // the answer last.
  function settled(under, result) {
    const w = result.worker;
    const previous = result.previous_pid ?? null;
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, SETTLE_MS);
      under.check = () => {
        const arrived = under.last && under.last.state === w.state && under.last.pid === (w.pid ?? null);
        const exited = previous === null || previous === w.pid || under.exited.has(previous);
        if (arrived && exited) {
          clearTimeout(timer);
          resolve();
        }
      };
      under.check();
    });
  }

  async function run(action) {
    const under = { action, last: null, exited: new Set(), check: () => {} };
    acting = under;
    progress.replaceChildren();
    step(`${action} requested`);
    draw();
    const result = await act(buttons[action], () => api.post(`/workers/${api.seg(id)}/${action}`));
    if (result) await settled(under, result);
    acting = null;
    if (result) {
      const w = result.worker;
      step(`${action} done in ${result.took_s.toFixed(2)} s: ${w.state}, pid ${result.previous_pid ?? "–"} → ${w.pid ?? "–"}`);
      // The events read the worker again; without them (the stream lost), the answer says.
      if (under.last === null) putWorker(w);
    } else {
      step(`${action} failed`);
    }
    draw();
  }

  function draw() {
    const w = state.workers.get(id);
    if (!w) return;
    fill(stateBadge, badge(w.state));
    buttons.start.disabled = !["stopped", "backoff", "boot_failed"].includes(w.state) || acting !== null;
    buttons.stop.disabled = w.state === "stopped" || acting !== null;
    buttons.restart.disabled = acting !== null;
    const now = Date.now();
    const rows = [
      ["PID", w.pid ?? "–"],
      ["Uptime", w.state === "running" && w.started_at ? duration((now - w.started_at) / 1000) : "–"],
      ["Started", clock(w.started_at)],
      ["Restarts", `${w.restarts}${w.restarts ? ` (${byReason(w.restarts_by_reason)})` : ""}`],
      ["Heartbeat age", `${duration(heartbeatAge(w, now))} (the last heartbeat known when read at ${clock(readTime(w))})`],
      ["Loop lag", w.loop_lag_ms === null ? "–" : `${w.loop_lag_ms.toFixed(1)} ms`],
      ["RSS", bytes(w.rss_bytes)],
      ["Process tree", w.tree_processes ? `${w.tree_processes} processes, ${bytes(w.tree_memory_bytes)} ${w.tree_memory_kind || ""}` : "–"],
      ["Memory limit", w.max_memory_bytes ? bytes(w.max_memory_bytes) : "none"],
      ["CPU", w.cpu_seconds === null ? "–" : `${w.cpu_seconds.toFixed(1)} s`],
      ["Errors", `${w.errors_total}, protocol ${w.protocol_errors}`],
      ["Accounts", w.accounts.length ? w.accounts.join(", ") : "none"],
      ["Code", `${w.code_version || "–"}${w.stale_code ? " — stale: reload to run the new code" : ""}`],
    ];
    if (w.stale_files.length) rows.push(["Changed files", w.stale_files.join(", ")]);
    fill(facts, ...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k } }, v)]));
    const last = w.last_exit;
    fill(exit, h("h3", {}, "Last exit"), last
      ? [h("p", {}, badge(last.reason), " ", last.signal ? `signal ${last.signal}` : `code ${last.code}`,
        ` at ${clock(last.at)} after ${duration(last.uptime_s)}`, last.during_start ? " (during start)" : "", ": ", last.detail),
      h("pre", { class: "log tail", tabindex: "0", "aria-label": "Its last log lines" }, last.log_tail.join("\n") || "(no lines)")]
      : h("p", { class: "muted" }, "It has not exited since the master started."));
  }

  // --- the live log -------------------------------------------------------------------
  let controller = null;
  let following = false;

  function follow() {
    controller?.abort();
    controller = new AbortController();
    logLines = [];
    logBox.replaceChildren();
    text(logState, "(following)");
    following = true;
    const mine = controller;
    api.streamLines(`/workers/${api.seg(id)}/logs${api.query({ tail: LOG_TAIL, follow: "true" })}`, addLines, mine.signal)
      .then(() => {
        if (mine === controller) text(logState, "(the stream ended; it resumes when the master is back)");
      })
      .catch((error) => {
        if (error.name !== "AbortError" && mine === controller) text(logState, `(not following: ${error.message})`);
      })
      .finally(() => {
        if (mine === controller) following = false;
      });
  }

  // Lines are kept (the last LOG_KEEP) and drawn at most once a frame, however fast
  // the worker writes.
  let logLines = [];
  let drawing = false;

  function addLines(lines) {
    logLines.push(...lines);
    if (logLines.length > LOG_KEEP) logLines = logLines.slice(-LOG_KEEP);
    if (drawing) return;
    drawing = true;
    requestAnimationFrame(() => {
      drawing = false;
      const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
      logBox.textContent = logLines.join("\n");
      if (atBottom) logBox.scrollTop = logBox.scrollHeight;
    });
  }

  draw();
  follow();
  return {
    draw,
    resume() {
      if (!following) follow();
    },
    close() {
      offState();
      offExit();
      controller?.abort();
      controller = null;
    },
  };
}
