// One line at the top of the page saying what an action did or why it failed.

import { h } from "./dom.js";

let timer = null;

export function notify(message, level = "info") {
  const box = document.getElementById("notice");
  clearTimeout(timer);
  box.replaceChildren(
    h("p", { class: `notice-${level}` }, message, " ",
      h("button", { type: "button", class: "quiet", "aria-label": "Dismiss", onclick: () => box.replaceChildren() }, "×")),
  );
  if (level === "info") timer = setTimeout(() => box.replaceChildren(), 6000);
}

// Runs an action for a button: disabled meanwhile, its failure said in the notice.
export async function act(button, action, done) {
  if (button) button.disabled = true;
  try {
    const answer = await action();
    if (done) notify(typeof done === "function" ? done(answer) : done);
    return answer;
  } catch (error) {
    notify(error.message, "error");
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}
