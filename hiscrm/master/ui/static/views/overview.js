// Overview: health and why, accounts by state, live charts, workers, the last errors.

import { chart } from "../chart.js";
import { badge, byReason, bytes, clock, duration, fill, h, syncRows, text } from "../dom.js";
import { heartbeatAge, on, state } from "../state.js";

export const ACCOUNT_STATES = ["running", "starting", "backoff", "down", "failed", "quarantined", "unassigned", "disabled"];

export function mount(main) {
  const healthBadge = h("span", {});
  const checks = h("ul", { class: "checks" });
  const byState = h("ul", { class: "states" });
  const rate = chart("Items committed per second, last minute", "items/s");
  const latency = chart("New inbound message, sent to committed, median per second", "ms");
  const workerRows = h("tbody");
  const readAt = h("span");
  const notable = h("ol", { class: "notable" });

  main.replaceChildren(
    h("h1", {}, "Overview"),
    h("section", { class: "cards" },
      h("article", { class: "card", id: "health" }, h("h2", {}, "Health ", healthBadge), checks),
      h("article", { class: "card", id: "accounts-by-state" }, h("h2", {}, h("a", { href: "#/accounts" }, "Accounts")), byState),
      h("article", { class: "card", id: "items-rate" }, h("h2", {}, "Items per second"), rate.el),
      h("article", { class: "card", id: "sync-latency" },
        h("h2", { title: "From a new inbound message's sent_at to its commit in the store (messages older than a minute are history being caught up, not counted)" },
          "Sync latency"), latency.el),
    ),
    h("section", { "aria-labelledby": "workers-title" },
      h("h2", { id: "workers-title" }, h("a", { href: "#/workers" }, "Workers")),
      h("div", { class: "scroll" },
        h("table", { class: "workers" },
          h("thead", {}, h("tr", {}, ...["Worker", "State", "PID", "Uptime", "Restarts", "Heartbeat", "RSS", "Code"].map((c) => h("th", { scope: "col" }, c)))),
          workerRows)),
      h("p", { class: "muted small" }, "RSS as read ", readAt, ", and read again whenever the worker changes; the heartbeat age is the last heartbeat known then, aging since."),
    ),
    h("section", { "aria-labelledby": "notable-title" }, h("h2", { id: "notable-title" }, "Last errors and exits"), notable),
  );

  function drawHealth() {
    const health = state.health;
    if (!health) return;
    fill(healthBadge, badge(health.status));
    fill(checks, ...Object.entries(health.checks).map(([name, check]) =>
      h("li", { class: `check-${check.status}` }, badge(check.status), " ", h("strong", {}, name), " ", check.detail)));
  }

  function drawAccounts() {
    const counts = new Map();
    let stale = 0;
    for (const account of state.accounts.values()) {
      counts.set(account.state, (counts.get(account.state) || 0) + 1);
      if (account.stale) stale += 1;
    }
    const items = ACCOUNT_STATES.filter((s) => counts.get(s)).map((s) =>
      h("li", { dataset: { state: s } }, badge(s), " ", h("strong", {}, counts.get(s))));
    if (stale) items.push(h("li", { dataset: { state: "stale" } }, badge("stale"), " ", h("strong", {}, stale)));
    if (!items.length) items.push(h("li", { class: "muted" }, "no accounts"));
    fill(byState, h("li", { class: "muted" }, `${state.accounts.size} in all`), ...items);
  }

  function drawWorkers() {
    const now = Date.now();
    syncRows(workerRows, [...state.workers.values()], (w) => w.id, makeWorkerRow, (row, w) => updateWorkerRow(row, w, now));
    text(readAt, state.workersReadAt ? `at ${clock(state.workersReadAt)}` : "not yet");
  }

  function drawNotable() {
    fill(notable, ...(state.notable.length
      ? state.notable.slice(0, 15).map((n) => h("li", { class: `level-${n.level}` },
        h("time", {}, clock(n.at)), " ", h("strong", {}, n.what), " ", n.text))
      : [h("li", { class: "muted" }, "nothing yet")]));
  }

  function drawCharts() {
    rate.draw(state.itemsPerSecond.values);
    latency.draw(state.syncLatency.values);
  }

  drawHealth();
  drawAccounts();
  drawWorkers();
  drawNotable();
  drawCharts();
  const off = [
    on("health", drawHealth),
    on("accounts", drawAccounts),
    on("workers", drawWorkers),
    on("notable", drawNotable),
    on("tick", () => {
      drawCharts();
      drawWorkers(); // uptimes move on
    }),
  ];
  return () => off.forEach((f) => f());
}

export function makeWorkerRow(worker) {
  const cells = {};
  const el = h("tr", { dataset: { worker: worker.id } },
    h("th", { scope: "row" }, h("a", { href: `#/workers/${encodeURIComponent(worker.id)}` }, worker.id)),
    ...["state", "pid", "uptime", "restarts", "heartbeat", "rss", "code"].map((name) => {
      cells[name] = h("td", { class: `col-${name}`, dataset: { label: name } });
      return cells[name];
    }));
  return { el, cells };
}

export function updateWorkerRow({ cells }, w, now) {
  fill(cells.state, badge(w.state));
  text(cells.pid, w.pid ?? "–");
  text(cells.uptime, w.state === "running" && w.started_at ? duration((now - w.started_at) / 1000) : "–");
  fill(cells.restarts, String(w.restarts), w.restarts ? h("span", { class: "muted small" }, ` (${byReason(w.restarts_by_reason)})`) : "");
  text(cells.heartbeat, duration(heartbeatAge(w, now)));
  text(cells.rss, bytes(w.tree_rss_bytes ?? w.rss_bytes));
  fill(cells.code, h("code", {}, w.code_version || "–"), w.stale_code ? [" ", badge("stale", "warn")] : "");
}
