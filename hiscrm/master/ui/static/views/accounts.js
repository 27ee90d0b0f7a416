// Accounts: state and why, errors, progress, stale flags; add, change options,
// enable/disable, release from quarantine, delete (the confirmation names what goes).

import * as api from "../api.js";
import { ask, field, parseOptions } from "../dialog.js";
import { ago, badge, clock, fill, h, syncRows, text } from "../dom.js";
import { deleting, deletionFailed, forget, known, refresh } from "../live.js";
import { act, notify } from "../notice.js";
import { on, state } from "../state.js";

const COLLECTIONS = ["conversations", "messages", "comments", "contents", "notifications"];
const FROM_CONFIG = "declared in the config file: change it there (then hiscrmctl update)";

export function mount(main) {
  const rows = h("tbody");
  const empty = h("p", { class: "muted", hidden: true }, "No accounts yet.");
  const id = h("input", { name: "id", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}", autocomplete: "off" });
  const platform = h("input", { name: "platform", value: "demo", required: true, autocomplete: "off" });
  const options = h("textarea", { name: "options", rows: 2, spellcheck: "false" }, "{}");
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: true });
  enabled.defaultChecked = true; // and after the form is reset
  const addButton = h("button", { type: "submit", class: "primary" }, "Add account");
  const form = h("form", { class: "add-account", onsubmit: (event) => add(event) },
    field("Id", id), field("Platform", platform, "a built-in name (demo) or module:Class"),
    field("Options (JSON)", options), h("p", { class: "field check" }, h("label", {}, enabled, " enabled")), addButton);
  main.replaceChildren(
    h("h1", {}, "Accounts"),
    h("details", { class: "card" }, h("summary", {}, "Add an account"), form),
    h("div", { class: "scroll" },
      h("table", { class: "accounts" },
        h("thead", {}, h("tr", {}, ...["Account", "State", "Worker", "Errors", "Last error", "Progress", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
        rows)),
    empty,
  );

  async function add(event) {
    event.preventDefault();
    let body;
    try {
      body = { id: id.value.trim(), platform: platform.value.trim(), options: parseOptions(options.value), enabled: enabled.checked };
    } catch (problem) {
      notify(problem.message, "error");
      return;
    }
    const made = await act(addButton, () => api.post("/accounts", body), (a) => `${a.id} added: ${a.state} (${a.reason})`);
    if (made) {
      known("accounts", made.id);
      state.accounts.set(made.id, made);
      draw();
      form.reset();
      options.value = "{}";
    }
  }

  function draw() {
    const now = Date.now();
    const accounts = [...state.accounts.values()].sort((a, b) => a.id.localeCompare(b.id));
    syncRows(rows, accounts, (a) => a.id, makeRow, (row, a) => updateRow(row, a, now));
    empty.hidden = accounts.length > 0;
  }

  draw();
  const off = [on("accounts", draw), on("tick", draw)];
  return () => off.forEach((f) => f());
}

function makeRow(account) {
  const cells = {};
  const el = h("tr", { dataset: { account: account.id } },
    ...["account", "state", "worker", "errors", "last_error", "progress", "actions"].map((name) => {
      cells[name] = h(name === "account" ? "th" : "td", { class: `col-${name}`, dataset: { label: name.replace("_", " ") }, scope: name === "account" ? "row" : null });
      return cells[name];
    }));
  const buttons = {
    toggle: h("button", { type: "button", dataset: { action: "toggle" } }),
    options: h("button", { type: "button", dataset: { action: "options" } }, "Options…"),
    release: h("button", { type: "button", dataset: { action: "release" } }, "Release"),
    remove: h("button", { type: "button", class: "danger", dataset: { action: "delete" } }, "Delete…"),
  };
  cells.actions.append(...Object.values(buttons));
  const row = { el, cells, buttons, account };
  buttons.toggle.addEventListener("click", () => toggle(row));
  buttons.options.addEventListener("click", () => editOptions(row));
  buttons.release.addEventListener("click", () =>
    act(buttons.release, () => api.post(`/accounts/${api.seg(row.account.id)}/release`), `${row.account.id} released from quarantine`)
      .then(() => refresh("accounts", row.account.id)));
  buttons.remove.addEventListener("click", () => remove(row));
  return row;
}

function updateRow(row, a, now) {
  row.account = a;
  const { cells, buttons } = row;
  fill(cells.account, h("a", { href: `#/conversations/${encodeURIComponent(a.id)}` }, a.id),
    h("span", { class: "muted small" }, ` ${a.platform} · ${a.source}`), a.enabled ? "" : [" ", badge("disabled")]);
  fill(cells.state, badge(a.state), a.stale ? [" ", badge("stale", "warn")] : "", a.quarantined && a.state !== "quarantined" ? [" ", badge("quarantined")] : "",
    h("div", { class: "muted small" }, `${a.reason} · since ${clock(a.state_since_at)}`));
  text(cells.worker, a.worker ?? "–");
  text(cells.errors, `${a.errors_total} errors, ${a.task_restarts} restarts`);
  fill(cells.last_error, a.last_error
    ? h("details", {}, h("summary", {}, `${clock(a.last_error.at)}: ${a.last_error.message}`), h("pre", { class: "log tail" }, a.last_error.traceback))
    : a.failed ? h("pre", { class: "log tail" }, a.failed) : h("span", { class: "muted" }, "none"));
  const counts = a.counts ? COLLECTIONS.filter((c) => a.counts[c]).map((c) => `${a.counts[c]} ${c}`).join(", ") : "";
  fill(cells.progress, h("div", {}, `progress ${ago(a.progress_at, now)}`), h("div", { class: "muted small" }, `last item ${ago(a.last_item_at, now)}`),
    counts ? h("div", { class: "muted small" }, counts) : "");
  const fromConfig = a.source === "config";
  text(buttons.toggle, a.enabled ? "Disable" : "Enable");
  for (const button of [buttons.toggle, buttons.options, buttons.remove]) {
    button.disabled = fromConfig;
    button.title = fromConfig ? FROM_CONFIG : "";
  }
  buttons.release.hidden = !a.quarantined;
}

async function toggle(row) {
  const a = row.account;
  const enabled = !a.enabled;
  const changed = await act(row.buttons.toggle, () => api.patch(`/accounts/${api.seg(a.id)}`, { enabled }),
    (answer) => `${answer.id} ${enabled ? "enabled" : "disabled"}: ${answer.state}`);
  if (changed) state.accounts.set(changed.id, changed);
  refresh("accounts", a.id);
}

async function editOptions(row) {
  const a = row.account;
  const box = h("textarea", { rows: 8, spellcheck: "false" }, JSON.stringify(a.options, null, 2));
  const options = await ask({
    title: `Options of ${a.id}`,
    body: [h("p", { class: "muted" }, `Its task restarts with the new options (platform ${a.platform}).`)],
    fields: [field("Options (JSON)", box)],
    confirm: "Save and restart its task",
    read: () => parseOptions(box.value),
  });
  if (options === null) return;
  const changed = await act(null, () => api.patch(`/accounts/${api.seg(a.id)}`, { options }), `${a.id}: options saved; its task restarts`);
  if (changed) state.accounts.set(changed.id, changed);
  refresh("accounts", a.id);
}

async function remove(row) {
  const a = row.account;
  let counts = a.counts;
  try {
    counts = (await api.get(`/accounts/${api.seg(a.id)}`)).counts;
  } catch (error) {
    notify(`cannot read what ${a.id} holds: ${error.message}`, "error");
    return;
  }
  const held = COLLECTIONS.map((c) => `${counts?.[c] ?? 0} ${c}`).join(", ");
  const purge = h("input", { type: "checkbox", name: "purge" });
  const answer = await ask({
    title: `Delete account ${a.id}?`,
    body: [
      h("p", {}, `Account ${a.id} (platform ${a.platform}, made through the API) stops and leaves the registry.`),
      h("p", {}, `It holds ${held}.`),
    ],
    fields: [h("p", { class: "field check" }, h("label", {}, purge, ` also delete its data (${held}) and its spool`))],
    confirm: `Delete ${a.id}`,
    danger: true,
    read: () => ({ purge: purge.checked }),
  });
  if (answer === null) return;
  deleting("accounts", a.id);
  const deleted = await act(null, () => api.del(`/accounts/${api.seg(a.id)}?purge=${answer.purge}`),
    (d) => `${d.id} deleted; ${d.purged ? `its data removed (${Object.entries(d.deleted).map(([k, n]) => `${n} ${k}`).join(", ")})` : "its data kept"}`);
  if (deleted) forget("accounts", a.id);
  else deletionFailed("accounts", a.id);
}
