// The dashboard: signs the page in (the session made by `hiscrmctl open`), reads the
// state once, follows the master's events, and shows one page at a time (#/…).

import * as api from "./api.js";
import { h } from "./dom.js";
import { start, stopStream } from "./live.js";
import { notify } from "./notice.js";
import { emit, on, setConnection, state } from "./state.js";
import * as accounts from "./views/accounts.js";
import * as conversations from "./views/conversations.js";
import * as overview from "./views/overview.js";
import * as workers from "./views/workers.js";

const PAGES = [
  ["overview", /^#?\/?$/, overview],
  ["workers", /^#\/workers(?:\/([^/]+))?$/, workers],
  ["accounts", /^#\/accounts$/, accounts],
  ["conversations", /^#\/conversations(?:\/([^/]+)(?:\/([^/]+)(?:\/([^/]+))?)?)?$/, conversations],
];

const main = document.getElementById("main");
let unmount = null;
let shown = null;

function route() {
  const hash = location.hash || "#/";
  const page = PAGES.find(([, pattern]) => pattern.test(hash));
  if (!page) {
    location.hash = "#/";
    return;
  }
  const [name, pattern, view] = page;
  const params = pattern.exec(hash).slice(1).map((p) => (p === undefined ? undefined : decodeURIComponent(p)));
  unmount?.();
  unmount = view.mount(main, params) || null;
  for (const link of document.querySelectorAll("nav[aria-label=Pages] a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `hiscrm: ${name}`;
  if (shown !== null && shown !== hash) main.focus({ preventScroll: true });
  shown = hash;
}

function drawConnection() {
  const el = document.getElementById("connection");
  const labels = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", signed_out: "signed out" };
  el.className = `connection connection-${state.connection}`;
  el.replaceChildren(h("span", { class: "dot", "aria-hidden": "true" }), labels[state.connection] || state.connection);
  el.title = state.connectionNote || "";
  if (state.stopping && state.connection !== "signed_out") el.append(` · master stopping (${state.stopping})`);
  if (state.connectionNote && state.connection !== "live") el.append(h("span", { class: "small" }, ` · ${state.connectionNote}`));
}

function signedOut(reason) {
  if (state.connection === "signed_out") return;
  stopStream();
  setConnection("signed_out", reason);
  unmount?.();
  unmount = null;
  main.replaceChildren(
    h("h1", {}, "Signed out"),
    h("p", {}, reason),
    h("p", {}, "On the master's host, run ", h("code", {}, "hiscrmctl open"), " and open the link it prints (",
      h("code", {}, "hiscrmctl open --browser"), " opens it for you)."),
  );
  document.getElementById("sign-out").hidden = true;
}

async function boot() {
  on("connection", drawConnection);
  on("rerender", route);
  api.onSignedOut(signedOut);
  drawConnection();
  try {
    state.session = await api.loadSession();
  } catch (error) {
    if (error.status !== 401) signedOut(`cannot reach the master: ${error.message}`);
    return;
  }
  const signOut = document.getElementById("sign-out");
  signOut.hidden = state.session.auth !== "session";
  signOut.addEventListener("click", async () => {
    try {
      await api.post("/session/sign-out");
      signedOut("You signed out.");
    } catch (error) {
      notify(`sign-out failed: ${error.message}`, "error");
    }
  });
  try {
    await start();
  } catch (error) {
    if (error.status === 401) return;
    notify(`reading the master's state failed: ${error.message}`, "error");
  }
  window.addEventListener("hashchange", route);
  route();
  emit("ready", state);
}

boot();
