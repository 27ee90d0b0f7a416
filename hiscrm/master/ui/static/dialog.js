// Modal dialogs (the browser's <dialog>: focus stays inside, Escape cancels).

import { h } from "./dom.js";

// Resolves to the form's values when confirmed, or null when cancelled. `fields` are
// the form's controls; `read` turns the form into the values (throwing says what is
// wrong, and the dialog stays open).
export function ask({ title, body = [], fields = [], confirm = "OK", danger = false, read = () => true }) {
  return new Promise((resolve) => {
    const error = h("p", { class: "notice-error", role: "alert", hidden: true });
    const form = h("form", { method: "dialog" },
      h("h2", {}, title), ...body, ...fields, error,
      h("div", { class: "actions" },
        h("button", { type: "button", class: "quiet", value: "cancel", onclick: () => close(null) }, "Cancel"),
        h("button", { type: "submit", class: danger ? "danger" : "primary", value: "ok" }, confirm)));
    const dialog = h("dialog", { "aria-label": title }, form);
    let settled = false;
    function close(value) {
      if (settled) return;
      settled = true;
      dialog.close();
      dialog.remove();
      resolve(value);
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      try {
        close(read(form));
      } catch (problem) {
        error.hidden = false;
        error.textContent = problem.message;
      }
    });
    dialog.addEventListener("cancel", () => close(null));
    document.body.append(dialog);
    dialog.showModal();
  });
}

// A labelled control: `label` then the control, tied by id.
export function field(label, control, hint) {
  control.id ||= `f-${Math.random().toString(36).slice(2)}`;
  return h("p", { class: "field" }, h("label", { for: control.id }, label), control,
    hint ? h("small", { class: "muted" }, hint) : null);
}

// Options as the API takes them: a JSON object.
export function parseOptions(textValue) {
  const trimmed = textValue.trim();
  if (!trimmed) return {};
  let value;
  try {
    value = JSON.parse(trimmed);
  } catch (problem) {
    throw new Error(`options: not JSON (${problem.message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error('options: a JSON object, e.g. {"rate": 2}');
  }
  return value;
}
