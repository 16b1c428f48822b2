// The hypervisor board: renders /api/state (the board) or /api/task/<id> (a task page), live through the
// server's event stream (/api/events), with a poll as fallback. Task data is user content: it only ever
// reaches the page as text (textContent), never as HTML, except the task body the server rendered escaped.
"use strict";

const CARDS_PER_COLUMN = 300; // a column shows this many cards; the filters narrow the rest
const FALLBACK_POLL_MS = 5000; // while the event stream is down
const SAFETY_POLL_MS = 30000; // even while it is up

let current = null; // the last state rendered
let shownVersion = -1;
let fetching = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function taskLink(id, text) {
  return el("a", { href: "/task/" + encodeURIComponent(id), class: "task-link", text: text || id });
}

function humanize(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return "-";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + "s";
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return minutes + "m" + String(seconds % 60).padStart(2, "0") + "s";
  return Math.floor(minutes / 60) + "h" + String(minutes % 60).padStart(2, "0") + "m";
}

function setConnection(state) {
  const node = document.getElementById("connection");
  if (node) {
    node.dataset.state = state;
    node.textContent = state;
  }
}

// -- the board ---------------------------------------------------------------------------------------------
function matches(task, project, text) {
  if (project && task.project !== project) return false;
  if (!text) return true;
  const hay = [task.id, task.title, task.assignee, task.project, task.status, task.claimed_by].join(" ").toLowerCase();
  return hay.includes(text);
}

function card(task) {
  const meta = el("div", { class: "meta" },
    el("span", { class: "chip p" + task.priority, text: "P" + task.priority }),
    task.project ? el("span", { class: "chip project", text: task.project }) : null,
    task.assignee ? el("span", { class: "chip assignee", text: "@" + task.assignee }) : null,
    task.claimed_by ? el("span", { class: "chip claimed", text: "claimed by " + task.claimed_by }) : null,
    task.attempts ? el("span", { class: "chip attempts", text: task.attempts + " attempt(s)" }) : null,
    task.column === "done" ? el("span", { class: "chip status", text: task.status }) : null);
  const deps = (task.depends_on || []).length
    ? el("div", { class: "meta deps" }, "depends on ", ...task.depends_on.flatMap((d, i) => [i ? ", " : "", taskLink(d)]))
    : null;
  return el("div", { class: "card", id: "card-" + task.id, dataset: { task: task.id, column: task.column } },
    el("div", { class: "id" }, taskLink(task.id)),
    el("div", { class: "title", text: task.title }), meta, deps);
}

function renderColumns(state) {
  const project = document.getElementById("filter-project").value;
  const text = document.getElementById("filter-text").value.trim().toLowerCase();
  const byColumn = Object.fromEntries(state.columns.map((c) => [c.id, []]));
  let shown = 0;
  for (const task of state.tasks) {
    if (matches(task, project, text)) {
      byColumn[task.column].push(task);
      shown += 1;
    }
  }
  const columns = state.columns.map((column) => {
    const tasks = byColumn[column.id];
    const cards = tasks.slice(0, CARDS_PER_COLUMN).map(card);
    const more = tasks.length > CARDS_PER_COLUMN
      ? el("div", { class: "more", text: `${tasks.length - CARDS_PER_COLUMN} more: narrow them with the filters` })
      : null;
    return el("section", { class: "column", id: "column-" + column.id, dataset: { column: column.id } },
      el("h2", {}, el("span", { text: column.title }), el("span", { class: "count", text: tasks.length })),
      cards, more);
  });
  document.getElementById("columns").replaceChildren(...columns);
  document.getElementById("shown").textContent = `${shown} of ${state.tasks.length} tasks`;
}

function renderProjects(state) {
  const select = document.getElementById("filter-project");
  const chosen = select.value;
  const options = [el("option", { value: "", text: "all" })];
  for (const project of state.projects) options.push(el("option", { value: project, text: project }));
  select.replaceChildren(...options);
  select.value = state.projects.includes(chosen) ? chosen : "";
}

function renderRun(state) {
  const run = state.run;
  const box = document.getElementById("run");
  if (!run) {
    box.replaceChildren(el("h3", { text: "No run recorded yet" }), el("p", { class: "muted", text: "Start one with `hypervisor run`." }));
    return;
  }
  const counts = Object.entries(run.counts || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
  const rows = run.workers.map((w) => el("tr", { class: "worker", dataset: { task: w.task_id, worker: w.worker } },
    el("td", { text: w.worker }),
    el("td", {}, taskLink(w.task_id), " ", el("span", { class: "muted", text: w.title || "" })),
    el("td", { text: w.attempt }),
    el("td", { class: "elapsed", dataset: { started: w.started_at || "" }, text: humanize(w.elapsed_s) }),
    el("td", { class: "last-call", text: w.last_call ? w.last_call.tool + (w.last_call.failed ? " (failed)" : "") : "-" }),
    el("td", { class: "files", text: (w.files || []).join(", ") || "-" }),
    el("td", { class: "tokens", text: w.tokens }),
    el("td", { class: "landing", text: w.landing === undefined ? "-" : (typeof w.landing === "string" ? w.landing : JSON.stringify(w.landing)) }),
    el("td", {}, w.log_url ? el("a", { href: w.log_url, text: "log" }) : "-")));
  const table = rows.length
    ? el("table", { id: "workers" }, el("thead", {}, el("tr", {}, ...["worker", "task", "attempt", "elapsed", "last tool call",
        "files edited", "tokens", "landing", "log"].map((h) => el("th", { text: h })))), el("tbody", {}, rows))
    : el("p", { class: "muted", text: "No worker is running." });
  const finished = (run.finished || []).slice(-10).reverse().map((t) => el("tr", {},
    el("td", {}, taskLink(t.task_id)), el("td", { text: t.status }), el("td", { text: t.attempts }),
    el("td", { text: humanize(t.duration_s) }), el("td", { text: t.tokens }),
    el("td", { text: t.landing === undefined ? "-" : (typeof t.landing === "string" ? t.landing : JSON.stringify(t.landing)) }),
    el("td", { text: t.text || "" }), el("td", {}, t.log_url ? el("a", { href: t.log_url, text: "log" }) : "-")));
  box.replaceChildren(...[
    el("h3", { id: "run-title", dataset: { status: run.status } }, `Run ${run.run_id}: ${run.status} · agent ${run.agent} · ${run.tokens} tokens`),
    el("p", { class: "muted", id: "run-counts", text: counts }),
    run.error ? el("p", { class: "error", text: run.error }) : null,
    table,
    finished.length ? el("details", {}, el("summary", { text: `finished in this run (${run.finished.length})` }),
      el("table", {}, el("thead", {}, el("tr", {}, ...["task", "status", "attempts", "time", "tokens", "landing", "outcome", "log"]
        .map((h) => el("th", { text: h })))), el("tbody", {}, finished))) : null].filter(Boolean));
}

function renderRuns(state) {
  const rows = state.runs.map((r) => el("tr", {},
    el("td", { text: r.run_id }), el("td", { text: r.status }), el("td", { text: r.agent || "" }),
    el("td", { text: r.started_at || "" }), el("td", { text: r.runtime_seconds === undefined || r.runtime_seconds === null ? "-" : humanize(r.runtime_seconds) }),
    el("td", { text: r.total_tokens ?? "-" }),
    el("td", { text: Object.entries(r.counts || {}).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ") })));
  document.getElementById("runs").replaceChildren(el("h3", { text: "Last runs" }), rows.length
    ? el("table", { id: "runs-table" }, el("thead", {}, el("tr", {}, ...["run", "status", "agent", "started", "runtime", "tokens", "counts"]
      .map((h) => el("th", { text: h })))), el("tbody", {}, rows))
    : el("p", { class: "muted", text: "None yet." }));
}

function renderInvalid(state) {
  const box = document.getElementById("invalid");
  if (!state.invalid || !state.invalid.length) return box.replaceChildren();
  box.replaceChildren(el("h3", { text: `Invalid task files (${state.invalid.length})` }),
    el("ul", {}, state.invalid.slice(0, 100).map((i) => el("li", {}, el("code", { text: i.path }), ": ", i.error))));
}

function renderBoard(state) {
  current = state;
  if (state.error) {
    document.getElementById("columns").replaceChildren(el("p", { class: "error", text: state.error }));
    return;
  }
  document.getElementById("root").textContent = state.task_root;
  renderProjects(state);
  renderRun(state);
  renderColumns(state);
  renderInvalid(state);
  renderRuns(state);
  document.body.dataset.version = state.version;
  document.body.dataset.rendered = String(performance.now());
}

function tickElapsed() {
  if (!current || !current.generated_at) return;
  for (const cell of document.querySelectorAll("td.elapsed[data-started]")) {
    const started = Date.parse(cell.dataset.started);
    if (!isNaN(started)) cell.textContent = humanize((Date.now() - started) / 1000);
  }
}

// -- a task page -------------------------------------------------------------------------------------------
function taskIdFromPath() {
  return decodeURIComponent(location.pathname.replace(/^\/task\//, ""));
}

function renderTask(data) {
  const task = data.task;
  document.title = `${task.id} · hypervisor board`;
  document.getElementById("task-id").textContent = task.id;
  document.getElementById("task-title").textContent = task.title;
  const fields = [["status", task.status], ["priority", task.priority], ["project", task.project], ["assignee", task.assignee],
    ["attempts", task.attempts], ["tags", (task.tags || []).join(", ")], ["scope", (task.scope || []).join(", ")],
    ["created", task.created], ["modified", task.modified], ["file", task.path]];
  const list = [];
  for (const [name, value] of fields) list.push(el("dt", { text: name }), el("dd", { text: value ?? "-" }));
  list.push(el("dt", { text: "depends on" }), el("dd", {}, (task.depends_on || []).length
    ? task.depends_on.flatMap((d, i) => [i ? ", " : "", taskLink(d)]) : "-"));
  document.getElementById("task-fields").replaceChildren(...list);
  const claim = data.claim;
  const activity = data.activity;
  document.getElementById("task-claim").replaceChildren(...(claim ? [el("h3", { text: "Claim" }), el("p", {},
    `${claim.caller} (${claim.live ? "live" : "expired"}) until ${claim.lease_expires_at}, attempt ${claim.attempts}`,
    activity ? ` · ${activity.calls} tool call(s), last ${activity.last_call ? activity.last_call.tool : "-"}; files: ${(activity.files || []).join(", ") || "-"}` : "")] : []));
  // the server rendered the markdown with every piece of the file's own HTML escaped
  document.getElementById("task-body").innerHTML = data.body_html;
  const latest = data.logs[data.logs.length - 1];
  const tail = el("pre", { id: "task-log", class: "log" });
  document.getElementById("task-logs").replaceChildren(el("h3", { text: "Worker logs" }), data.logs.length
    ? el("ul", {}, data.logs.map((l) => el("li", {}, el("a", { href: l.url, text: `run ${l.run_id}, attempt ${l.attempt}` }), ` (${l.size} bytes)`)))
    : el("p", { class: "muted", text: "None." }), latest ? tail : null);
  if (latest) {
    // the latest log's end, as text
    fetch(latest.url, { cache: "no-store" }).then((answer) => answer.ok ? answer.text() : "").then((text) => {
      tail.textContent = text.length > 20000 ? "[...]\n" + text.slice(-20000) : text;
    }).catch(() => {});
  }
  const events = data.events.slice().reverse().map((e) => {
    const { ts, event, task: _task, ...rest } = e;
    return el("tr", {}, el("td", { text: ts }), el("td", { text: event }), el("td", { text: JSON.stringify(rest) }));
  });
  document.getElementById("task-events").replaceChildren(el("h3", { text: `Events (${data.events_total})` }), events.length
    ? el("table", { id: "events" }, el("tbody", {}, events)) : el("p", { class: "muted", text: "None." }));
  document.body.dataset.version = String(Date.now());
}

// -- fetching and the live stream --------------------------------------------------------------------------
async function refresh() {
  if (fetching) return fetching;
  fetching = (async () => {
    try {
      if (document.body.dataset.page === "task") {
        const answer = await fetch("/api/task/" + encodeURIComponent(taskIdFromPath()), { cache: "no-store" });
        if (answer.ok) renderTask(await answer.json());
        return;
      }
      const answer = await fetch("/api/state", { cache: "no-store" });
      if (!answer.ok) return;
      const state = await answer.json();
      if (state.version !== shownVersion || !current) {
        shownVersion = state.version;
        renderBoard(state);
      } else {
        current = state;
      }
    } catch (error) {
      setConnection("offline");
    } finally {
      fetching = null;
    }
  })();
  return fetching;
}

function connect() {
  if (!window.EventSource) {
    setConnection("polling");
    return null;
  }
  const stream = new EventSource("/api/events");
  stream.addEventListener("open", () => {
    setConnection("live");
    refresh(); // (re)connected: whatever changed while the stream was down
  });
  stream.addEventListener("error", () => setConnection(stream.readyState === EventSource.CLOSED ? "polling" : "reconnecting"));
  stream.addEventListener("state", (message) => {
    setConnection("live");
    const version = JSON.parse(message.data).version;
    if (document.body.dataset.page === "task" || version !== shownVersion) refresh();
  });
  return stream;
}

function start() {
  let stream = connect();
  refresh();
  setInterval(() => {
    if (!stream || stream.readyState !== EventSource.OPEN) {
      if (stream && stream.readyState === EventSource.CLOSED) stream = connect(); // the browser gave up: start again
      refresh();
    }
  }, FALLBACK_POLL_MS);
  setInterval(refresh, SAFETY_POLL_MS);
  if (document.body.dataset.page === "board") {
    setInterval(tickElapsed, 1000);
    for (const id of ["filter-project", "filter-text"]) {
      document.getElementById(id).addEventListener("input", () => current && renderColumns(current));
    }
  }
}

document.addEventListener("DOMContentLoaded", start);
