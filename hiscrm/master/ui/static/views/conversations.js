// Conversations, the agent's view: per account, conversations by their last message,
// messages arriving live, unread marks (read through the API once shown), and a reply
// box posting to the outbox with a request id, its state shown as it changes. Comments
// on contents the same way.

import * as api from "../api.js";
import { ago, badge, clock, fill, h, requestId, syncRows, text } from "../dom.js";
import { notify } from "../notice.js";
import { emit, on, state } from "../state.js";

const TABS = {
  messages: {
    label: "Conversations",
    parents: "conversations",
    parentKind: "conversation",
    parentSort: "last_message_at",
    parentTime: (c) => c.last_message_at,
    childKind: "message",
    parentField: "conversation_id",
    time: "sent_at",
    author: (m) => (m.direction === "outbound" ? "you" : m.sender_name || m.sender_id),
    title: (c) => c.title || c.id,
    body: (parent, textValue, rid) => ({ conversation_id: parent, text: textValue, request_id: rid }),
  },
  comments: {
    label: "Comments",
    parents: "contents",
    parentKind: "content",
    parentSort: "synced_at",
    parentTime: (c) => c.synced_at,
    childKind: "comment",
    parentField: "content_id",
    time: "created_at",
    author: (c) => (c.direction === "outbound" ? "you" : c.author_name || c.author_id),
    title: (c) => c.title || c.id,
    body: (parent, textValue, rid, replyTo) => ({ content_id: parent, parent_id: replyTo, text: textValue, request_id: rid }),
  },
};
const LIST_LIMIT = 200;
const THREAD_LIMIT = 200;
const THREAD_KEEP = 500; // rows kept in an open thread

export function mount(main, params) {
  const accounts = [...state.accounts.keys()].sort();
  const accountId = params[0] || accounts[0];
  const tab = TABS[params[1]] ? params[1] : "messages";
  const openId = params[2] || null;
  const k = TABS[tab];
  const base = `#/conversations/${encodeURIComponent(accountId || "")}`;

  if (!accountId) {
    main.replaceChildren(h("h1", {}, "Conversations"), h("p", { class: "muted" }, "No accounts yet: add one on the Accounts page."));
    return on("accounts", () => state.accounts.size && emit("rerender"));
  }

  const picker = h("select", { id: "account-picker", onchange: () => (location.hash = `#/conversations/${encodeURIComponent(picker.value)}/${tab}`) },
    ...accounts.map((id) => h("option", { value: id, selected: id === accountId }, id)));
  const list = h("ul", { class: "threads", "aria-label": k.label });
  const listNote = h("p", { class: "muted small" });
  const head = h("header", { class: "thread-head" });
  const items = h("ol", { class: "messages", "aria-live": "polite", "aria-relevant": "additions" });
  const scroller = h("div", { class: "thread-scroll", tabindex: "0", "aria-label": "Messages" }, items);
  const box = h("textarea", { id: "reply-text", rows: 2, placeholder: "Write a reply (Ctrl+Enter sends)", required: true, maxlength: 20000 });
  const replyTo = h("p", { class: "muted small", hidden: true });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const form = h("form", { class: "reply", onsubmit: (event) => submit(event) },
    replyTo, h("label", { for: "reply-text", class: "sr-only" }, "Reply"), box, send);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });

  main.replaceChildren(
    h("h1", { class: "sr-only" }, "Conversations"),
    h("div", { class: `chat ${openId ? "has-thread" : ""}` },
      h("aside", { class: "chat-list" },
        h("p", { class: "field" }, h("label", { for: "account-picker" }, "Account"), picker),
        h("nav", { class: "tabs", "aria-label": "Kind" }, ...Object.entries(TABS).map(([key, t]) =>
          h("a", { href: `${base}/${key}`, "aria-current": key === tab ? "page" : false }, t.label))),
        list, listNote),
      h("section", { class: "chat-thread", "aria-label": "Thread" }, head,
        openId ? [scroller, form] : h("p", { class: "muted" }, `Choose one of the ${k.label.toLowerCase()}.`))),
  );

  const parents = new Map(); // conversations or contents
  const unread = new Map(); // parent id -> Set of unread inbound item ids
  const children = new Map(); // the open thread's messages or comments
  const replies = new Map(); // request id -> outbox entry (this account)
  const marking = new Set(); // read marks asked for
  let parentReply = null; // comments: the comment being answered
  let closed = false;

  // --- reading --------------------------------------------------------------------------
  async function load() {
    try {
      const path = `/accounts/${api.seg(accountId)}`;
      const [page, unreadPage, outbox, thread] = await Promise.all([
        api.get(`${path}/${k.parents}${api.query({ sort: k.parentSort, order: "desc", limit: LIST_LIMIT })}`),
        api.get(`${path}/${k.childKind}s${api.query({ is_read: false, direction: "inbound", limit: 1000 })}`),
        api.get(`${path}/outbox${api.query({ limit: 200 })}`),
        openId ? api.get(`${path}/${k.childKind}s${api.query({ [k.parentField]: openId, sort: k.time, order: "desc", limit: THREAD_LIMIT })}`) : null,
      ]);
      if (closed) return;
      for (const p of page.items) upsert(parents, p);
      unread.clear();
      for (const item of unreadPage.items) addUnread(item);
      for (const entry of outbox.items) replies.set(entry.request_id, entry);
      if (thread) for (const item of thread.items) upsert(children, item);
      text(listNote, page.total > page.items.length ? `the ${page.items.length} most recent of ${page.total}` : "");
      drawList();
      drawThread(true);
    } catch (error) {
      if (error.status === 404) fill(head, h("p", { class: "notice-error" }, `No account ${accountId}.`));
      else notify(`reading ${accountId} failed: ${error.message}`, "error");
    }
  }

  function upsert(map, item) {
    const known = map.get(item.id);
    // Newer versions win; at the same version a read mark does not go back.
    if (!known || item.version > known.version || (item.version === known.version && (item.is_read || !known.is_read))) {
      map.set(item.id, item);
      return true;
    }
    return false;
  }

  function addUnread(item) {
    const parent = item[k.parentField];
    if (!unread.has(parent)) unread.set(parent, new Set());
    if (item.direction === "inbound" && !item.is_read) unread.get(parent).add(item.id);
    else unread.get(parent).delete(item.id);
  }

  // --- drawing --------------------------------------------------------------------------
  function drawList() {
    const sorted = [...parents.values()].sort((a, b) => (k.parentTime(b) || 0) - (k.parentTime(a) || 0) || a.id.localeCompare(b.id));
    syncRows(list, sorted, (p) => p.id, (p) => {
      const count = h("span", { class: "unread-count" });
      const when = h("span", { class: "muted small" });
      const title = h("span", { class: "title" });
      const link = h("a", { href: `${base}/${tab}/${encodeURIComponent(p.id)}`, "aria-current": p.id === openId ? "page" : false }, title, " ", count, h("br"), when);
      return { el: h("li", { dataset: { id: p.id } }, link), count, when, title };
    }, (row, p) => {
      text(row.title, k.title(p));
      const n = unread.get(p.id)?.size || 0;
      text(row.count, n ? `${n} unread` : "");
      row.count.hidden = !n;
      text(row.when, tab === "messages" ? `last message ${ago(p.last_message_at)}` : `${p.comment_count} comments · ${p.views} views`);
    });
    if (!sorted.length) text(listNote, `No ${k.label.toLowerCase()} yet.`);
    else if (listNote.textContent.startsWith("No ")) text(listNote, "");
  }

  function drawThread(scroll = false) {
    if (!openId) return;
    const parent = parents.get(openId);
    fill(head, h("a", { class: "back", href: `${base}/${tab}` }, "← back"),
      h("h2", {}, parent ? k.title(parent) : openId),
      parent && tab === "comments" && parent.url ? h("span", { class: "muted small" }, parent.url) : "");
    const atBottom = scroll || scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 8;
    const byItem = new Map();
    for (const entry of replies.values()) if (entry.item_id) byItem.set(entry.item_id, entry);
    const shown = [...children.values()].sort((a, b) => a[k.time] - b[k.time] || a.id.localeCompare(b.id));
    // A thread followed for hours keeps its newest rows only (the API has the rest).
    for (const old of shown.splice(0, Math.max(0, shown.length - THREAD_KEEP))) children.delete(old.id);
    const pending = [...replies.values()]
      .filter((e) => e[k.parentField] === openId && e.kind === k.childKind && !(e.item_id && children.has(e.item_id)))
      .sort((a, b) => a.created_at - b.created_at);
    syncRows(items, [...shown.map((m) => ({ m, entry: byItem.get(m.id) })), ...pending.map((entry) => ({ entry }))],
      (row) => (row.m ? `i:${row.m.id}` : `r:${row.entry.request_id}`), makeItem, updateItem);
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
    markRead();
  }

  function makeItem() {
    const meta = h("p", { class: "meta" });
    const body = h("p", { class: "text" });
    const status = h("p", { class: "reply-status" });
    return { el: h("li", { class: "msg" }, meta, body, status), meta, body, status };
  }

  function updateItem(row, { m, entry }) {
    const item = m || null;
    // Drawn again only when it changed: an event redraws the thread, not every row in it.
    const drawn = [item?.version, item?.is_read, entry?.state, entry?.updated_at, entry?.error, entry?.item_id,
      tab === "comments" && item?.parent_id ? children.has(item.parent_id) : null].join("|");
    if (row.drawn === drawn) return;
    row.drawn = drawn;
    row.el.className = `msg ${item ? item.direction : "outbound pending"}${item && item.direction === "inbound" && !item.is_read ? " unread" : ""}`;
    if (item) row.el.dataset.id = item.id;
    if (entry) row.el.dataset.requestId = entry.request_id;
    const parentComment = item && tab === "comments" && item.parent_id ? children.get(item.parent_id) : null;
    fill(row.meta,
      h("strong", {}, item ? k.author(item) : "you"), " ",
      h("time", {}, clock(item ? item[k.time] : entry.created_at)),
      item && item.direction === "inbound" && !item.is_read ? [" ", badge("unread")] : "",
      parentComment ? h("span", { class: "muted small" }, ` ↪ ${k.author(parentComment)}`) : "");
    text(row.body, item ? item.text : entry.text);
    const actions = [];
    if (tab === "comments" && item) actions.push(h("button", { type: "button", class: "quiet", onclick: () => answer(item) }, "Reply"));
    if (entry) {
      actions.unshift(h("span", { class: `reply-state state-${entry.state}` }, entry.state), entry.error ? ` ${entry.error}` : "");
      if (["failed", "unknown", "expired"].includes(entry.state)) actions.push(" ", h("button", { type: "button", onclick: (e) => retry(e.target, entry) }, "Retry"));
      if (entry.state === "queued") actions.push(" ", h("button", { type: "button", class: "quiet", onclick: (e) => cancel(e.target, entry) }, "Cancel"));
    }
    fill(row.status, ...actions);
    row.status.hidden = !actions.length;
  }

  // --- read marks -------------------------------------------------------------------------
  function markRead() {
    if (document.visibilityState !== "visible" || !openId) return;
    for (const item of children.values()) {
      if (item.direction !== "inbound" || item.is_read || marking.has(item.id)) continue;
      marking.add(item.id);
      api.post(`/accounts/${api.seg(accountId)}/${k.childKind}s/${api.seg(item.id)}/read`).catch((error) => {
        marking.delete(item.id);
        if (error.status !== 401) notify(`marking ${item.id} read failed: ${error.message}`, "error");
      });
    }
  }

  // --- replies ------------------------------------------------------------------------------
  function answer(comment) {
    parentReply = comment.id;
    fill(replyTo, `Replying to ${k.author(comment)} `, h("button", { type: "button", class: "quiet", onclick: () => answer({ id: null }) }, "reply to the post instead"));
    replyTo.hidden = !comment.id;
    if (!comment.id) parentReply = null;
    box.focus();
  }

  async function submit(event) {
    event.preventDefault();
    const value = box.value.trim();
    if (!value) return;
    const rid = requestId();
    const body = k.body(openId, value, rid, parentReply);
    const now = Date.now();
    replies.set(rid, { ...body, account_id: accountId, kind: k.childKind, state: "posting", error: null, item_id: null, created_at: now });
    box.value = "";
    drawThread(true);
    send.disabled = true;
    try {
      const entry = await api.post(`/accounts/${api.seg(accountId)}/${k.childKind}s`, body);
      keepReply(entry);
    } catch (error) {
      replies.set(rid, { ...replies.get(rid), state: "not sent", error: error.message });
      box.value = value;
    } finally {
      send.disabled = false;
    }
    drawThread();
  }

  // An outbox entry, unless the page knows a newer state of it already: an action's answer
  // (a retry: queued) can come after the events of what followed (sending, sent).
  function keepReply(entry) {
    const known = replies.get(entry.request_id);
    if (!known || known.state === "posting" || entry.updated_at >= (known.updated_at || 0)) replies.set(entry.request_id, entry);
  }

  async function retry(button, entry) {
    button.disabled = true;
    try {
      keepReply(await api.post(`/accounts/${api.seg(accountId)}/outbox/${api.seg(entry.request_id)}/retry`));
    } catch (error) {
      notify(`retry failed: ${error.message}`, "error");
    }
    drawThread();
  }

  async function cancel(button, entry) {
    button.disabled = true;
    try {
      keepReply(await api.del(`/accounts/${api.seg(accountId)}/outbox/${api.seg(entry.request_id)}`));
    } catch (error) {
      notify(`cancel failed: ${error.message}`, "error");
    }
    drawThread();
  }

  // --- live ----------------------------------------------------------------------------------
  const off = [
    on("item", ({ kind, item }) => {
      if (item.account_id !== accountId) return;
      if (kind === k.parentKind && upsert(parents, item)) drawList();
      if (kind === k.childKind) {
        addUnread(item);
        drawList();
        if (item[k.parentField] === openId && upsert(children, item)) drawThread();
      }
    }),
    on("reply.state", (entry) => {
      if (entry.account_id !== accountId) return;
      keepReply(entry);
      drawThread();
    }),
    on("reload", () => load()),
    on("tick", () => drawList()),
  ];
  const onVisible = () => markRead();
  document.addEventListener("visibilitychange", onVisible);
  load();
  if (openId) box.focus({ preventScroll: true });
  return () => {
    closed = true;
    off.forEach((f) => f());
    document.removeEventListener("visibilitychange", onVisible);
  };
}
