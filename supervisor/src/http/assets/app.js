// kugetsu dashboard: plain JS, no framework, no build step.
//
// Data flow: GET /api/v1/tasks and /api/v1/fleet every POLL_MS (the fallback, and the only
// source of RSS figures); the SSE stream /api/v1/events for changes between polls; the open
// task's own SSE stream /api/v1/tasks/ID/events (replayed from its first event) for its log.
// Every request is authenticated by the HttpOnly cookie `/?token=T` set (same origin).
//
// Everything a model produced (prompts, text, tool arguments and output, diffs, file names)
// is hostile: it only ever reaches the page as text nodes (textContent), never as markup.
"use strict";

(function () {
  const POLL_MS = 2000;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 15000;
  const LOG_MAX_LINES = 3000;
  const DIFF_MAX_LINES = 20000;
  const OUTPUT_PREVIEW_CHARS = 600;
  const PRIORITY_ORDER = { high: 0, normal: 1, low: 2 };
  const LIVE = new Set(["running", "waiting"]);

  const state = {
    tasks: new Map(), // id -> TaskSummary
    lastTool: new Map(), // id -> the tool it started last (from the event stream)
    fleet: null,
    selected: null,
    signedOut: false,
    connected: null, // null: not yet known
    pollTimer: null,
    pollFailures: 0,
    events: null, // EventSource of /api/v1/events
    eventsBackoff: BACKOFF_MIN_MS,
    refreshSoon: null,
    renderSoon: null,
    detail: null, // the open task's log stream, see openDetail
  };

  // ---- small DOM helpers (text only) -------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  // el("td", {class: "x"}, "text", otherNode): attributes are set with setAttribute (never
  // "style" or event handlers), children strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v !== undefined && v !== null) node.setAttribute(k, String(v));
      }
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // ---- formatting --------------------------------------------------------------------------

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Number(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }

  function tokens(n) {
    n = Number(n || 0);
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
    return String(n);
  }

  function age(created) {
    const t = Date.parse(created);
    if (Number.isNaN(t)) return "–";
    let s = Math.max(0, Math.floor((Date.now() - t) / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m" + String(s % 60).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h" + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d";
  }

  function clock(ts) {
    const t = Date.parse(ts);
    if (Number.isNaN(t)) return "";
    return new Date(t).toTimeString().slice(0, 8);
  }

  function cost(usage) {
    if (!usage || usage.cost_usd === undefined || usage.cost_usd === null) return "–";
    return "$" + Number(usage.cost_usd).toFixed(Number(usage.cost_usd) < 1 ? 4 : 2);
  }

  function oneLine(text, max) {
    const s = String(text === undefined || text === null ? "" : text).replace(/\s+/g, " ").trim();
    return s.length > max ? s.slice(0, max - 1) + "…" : s;
  }

  function shortArgs(tool, args) {
    if (args === null || args === undefined) return "";
    if (typeof args !== "object") return oneLine(args, 300);
    if (tool === "bash" && typeof args.command === "string") return oneLine(args.command, 300);
    if (typeof args.path === "string") {
      const rest = Object.keys(args).filter((k) => k !== "path");
      return rest.length ? args.path + " (" + rest.join(", ") + ")" : args.path;
    }
    return oneLine(JSON.stringify(args), 300);
  }

  // ---- HTTP --------------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      setConnected(false);
      throw new HttpError(0, "unreachable", "the daemon is unreachable (" + e.message + ")");
    }
    setConnected(true);
    let data = null;
    const text = await res.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (res.status === 401) {
      setSignedOut(true);
      throw new HttpError(401, "unauthorized", "not signed in");
    }
    if (!res.ok) {
      const err = data && data.error ? data.error : {};
      throw new HttpError(res.status, err.code, err.message || text || res.statusText);
    }
    setSignedOut(false);
    return data;
  }

  // ---- connection state --------------------------------------------------------------------

  function showBanner(text, bad) {
    const b = $("banner");
    b.textContent = text;
    b.classList.toggle("bad", Boolean(bad));
    b.hidden = false;
  }

  function renderConnection() {
    const conn = $("conn");
    if (state.signedOut) {
      conn.textContent = "not signed in";
      conn.className = "conn down";
      showBanner("Not signed in: open /?token=TOKEN to sign in (the token is in <state_dir>/http.token).", true);
    } else if (state.connected === false) {
      conn.textContent = "disconnected";
      conn.className = "conn down";
      showBanner("disconnected, retrying… (the daemon does not answer)", false);
    } else if (state.connected === true) {
      conn.textContent = state.events && state.events.readyState === 1 ? "live" : "polling";
      conn.className = "conn live";
      $("banner").hidden = true;
    }
    $("signin").hidden = !state.signedOut;
    $("main").hidden = state.signedOut;
  }

  function setConnected(up) {
    if (state.connected === up) return;
    state.connected = up;
    renderConnection();
  }

  function setSignedOut(out) {
    if (state.signedOut === out) return;
    state.signedOut = out;
    if (out) {
      closeEvents();
      closeDetailStream();
    }
    renderConnection();
    // Signed in again (another tab used /?token=): the open task's log starts over.
    if (!out && state.selected && !state.detail) openDetail(state.selected);
  }

  // ---- polling -----------------------------------------------------------------------------

  async function poll() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
    try {
      const [list, fleet] = await Promise.all([
        api("GET", "/api/v1/tasks"),
        api("GET", "/api/v1/fleet"),
      ]);
      state.pollFailures = 0;
      const seen = new Map();
      for (const t of list.tasks || []) seen.set(t.id, t);
      state.tasks = seen;
      state.fleet = fleet;
      render();
      if (!state.events) openEvents();
    } catch (e) {
      state.pollFailures += 1;
    }
    // Back off while the daemon is away or the cookie is refused.
    const delay =
      state.pollFailures === 0
        ? POLL_MS
        : Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(state.pollFailures - 1, 4));
    state.pollTimer = setTimeout(poll, delay);
  }

  function refreshSoon() {
    if (state.refreshSoon) return;
    state.refreshSoon = setTimeout(() => {
      state.refreshSoon = null;
      poll();
    }, 250);
  }

  // ---- the fleet's event stream ------------------------------------------------------------

  function openEvents() {
    if (state.events || state.signedOut) return;
    const es = new EventSource("/api/v1/events");
    state.events = es;
    es.onopen = () => {
      state.eventsBackoff = BACKOFF_MIN_MS;
      setConnected(true);
      renderConnection();
    };
    es.onmessage = (msg) => {
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch (e) {
        return;
      }
      applyEvent(ev);
    };
    es.onerror = () => {
      // EventSource's own retry is fixed and blind to 401s: close it, ask the REST API what
      // is wrong (poll sets the banner), and reopen with backoff.
      closeEvents();
      const wait = state.eventsBackoff;
      state.eventsBackoff = Math.min(BACKOFF_MAX_MS, state.eventsBackoff * 2);
      setTimeout(() => {
        poll();
      }, wait);
    };
  }

  function closeEvents() {
    if (state.events) {
      state.events.close();
      state.events = null;
    }
  }

  // What an event changes in the task list, until the next poll brings the full summary.
  function applyEvent(ev) {
    if (!ev || typeof ev.task !== "string") return;
    const t = state.tasks.get(ev.task);
    switch (ev.type) {
      case "queued":
        refreshSoon();
        return;
      case "started":
      case "restarted":
        if (t) t.status = "running";
        break;
      case "turn_start":
        if (t && typeof ev.turn === "number") t.turns = ev.turn;
        break;
      case "tool_start":
        state.lastTool.set(ev.task, ev.tool);
        if (t) t.tool = ev.tool;
        break;
      case "tool_end":
        if (t) t.tool = null;
        break;
      case "rate_limited":
        if (t) t.status = "waiting";
        break;
      case "finished":
        if (t) {
          t.status = ev.status;
          t.tool = null;
          t.rss_bytes = null;
        }
        refreshSoon();
        break;
      default:
        // Text and the rest change nothing the tables show.
        if (t) return;
        break;
    }
    if (!t) refreshSoon();
    renderSoon();
  }

  // Bursts of events are drawn once.
  function renderSoon() {
    if (state.renderSoon) return;
    state.renderSoon = setTimeout(() => {
      state.renderSoon = null;
      render();
    }, 100);
  }

  // ---- rendering ---------------------------------------------------------------------------

  function statusNode(status) {
    return el("span", { class: "status st-" + status }, status);
  }

  // The memory cell of a live shadow: a bar of its RSS against its limit, and the figures.
  function setMemory(cell, rss, limit, live) {
    if (!live) {
      if (cell.firstChild && cell.firstChild.nodeType !== Node.TEXT_NODE) clear(cell);
      setText(cell, bytes(limit) + " limit");
      return;
    }
    let bar = cell.querySelector(".membar");
    if (!bar) {
      clear(cell);
      bar = el("span", { class: "membar" }, el("span", { class: "fill" }));
      cell.appendChild(el("span", { class: "mem" }, bar, el("span", { class: "memtext" })));
    }
    const fill = bar.firstChild;
    const frac = limit > 0 && rss !== null && rss !== undefined ? rss / limit : 0;
    fill.style.width = Math.min(100, Math.max(0, frac * 100)).toFixed(1) + "%";
    fill.classList.toggle("over", frac >= 1);
    fill.classList.toggle("high", frac >= 0.8 && frac < 1);
    bar.setAttribute("title", bytes(rss) + " of " + bytes(limit));
    setText(cell.querySelector(".memtext"), bytes(rss) + " / " + bytes(limit));
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  // Brings the rows of `body` (one per task, keyed by data-task) to `items`, in order,
  // reusing the rows that stay: a row under the pointer is never replaced by a copy.
  function syncRows(body, items, build, update) {
    const existing = new Map();
    for (const row of Array.from(body.rows)) existing.set(row.getAttribute("data-task"), row);
    items.forEach((item, i) => {
      let row = existing.get(item.id);
      if (row) existing.delete(item.id);
      else {
        row = build(item);
        row.setAttribute("tabindex", "0");
        row.addEventListener("click", () => openDetail(item.id));
        row.addEventListener("keydown", (ev) => {
          if (ev.key === "Enter" || ev.key === " ") {
            ev.preventDefault();
            openDetail(item.id);
          }
        });
      }
      update(row, item, i);
      if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
    });
    for (const row of existing.values()) row.remove();
  }

  function cells(id, classes) {
    return el("tr", { "data-task": id }, ...classes.map((c) => el("td", { class: c })));
  }

  function render() {
    const all = Array.from(state.tasks.values());
    const queued = all.filter((t) => t.status === "queued");
    const shadows = all.filter((t) => t.status !== "queued");
    // Running first (oldest first), then the finished ones, newest first.
    shadows.sort((a, b) => {
      const la = LIVE.has(a.status) ? 0 : 1;
      const lb = LIVE.has(b.status) ? 0 : 1;
      if (la !== lb) return la - lb;
      return la === 0 ? (a.id < b.id ? -1 : 1) : a.id < b.id ? 1 : -1;
    });
    queued.sort((a, b) => {
      const pa = PRIORITY_ORDER[a.priority] ?? 1;
      const pb = PRIORITY_ORDER[b.priority] ?? 1;
      return pa !== pb ? pa - pb : a.id < b.id ? -1 : 1;
    });
    renderCounts(all);
    renderShadows(shadows);
    renderQueue(queued);
    renderChart();
    if (state.selected) renderDetailFacts();
  }

  function renderCounts(all) {
    const f = state.fleet;
    const running = f ? f.running : all.filter((t) => LIVE.has(t.status)).length;
    const queued = f ? f.queued : all.filter((t) => t.status === "queued").length;
    $("count-running").textContent = f ? running + " / " + f.max_shadows : String(running);
    $("count-queued").textContent = String(queued);
    $("count-memory").textContent = f ? bytes(f.rss_bytes) + " of " + bytes(f.mem_limit) : "–";
    if (f && f.host_total_bytes) {
      $("count-memory").setAttribute("title", "RSS of the running shadows, of their limits; the host has " + bytes(f.host_total_bytes));
    }
  }

  function renderShadows(shadows) {
    const build = (t) => cells(t.id, ["id", "status-cell", "prio", "turn", "tool", "memory", "tokens", "cost", "age", "prompt-cell"]);
    const update = (row, t) => {
      const c = row.cells;
      const live = LIVE.has(t.status);
      const tool = t.tool || state.lastTool.get(t.id) || null;
      const usage = t.usage || {};
      row.classList.toggle("selected", t.id === state.selected);
      setText(c[0], t.id);
      if (!c[1].firstChild) c[1].appendChild(el("span"));
      c[1].firstChild.className = "status st-" + t.status;
      setText(c[1].firstChild, t.status);
      c[2].className = "prio prio-" + t.priority;
      setText(c[2], t.priority);
      setText(c[3], String(t.turns ?? 0));
      // The tool running now, else (dimmed) the last one this page saw start.
      setText(c[4], tool || "–");
      c[4].classList.toggle("last", !t.tool && Boolean(tool));
      c[4].setAttribute("title", t.tool ? "running now" : tool ? "the last tool it ran" : "");
      setMemory(c[5], t.rss_bytes, t.mem_limit, live);
      setText(c[6], tokens(usage.input_tokens) + " / " + tokens(usage.output_tokens));
      setText(c[7], cost(usage));
      setText(c[8], age(t.created));
      c[9].setAttribute("title", oneLine(t.prompt, 2000));
      setText(c[9], oneLine(t.prompt, 120));
    };
    syncRows($("shadows").tBodies[0], shadows, build, update);
    $("shadows-empty").hidden = shadows.length > 0;
  }

  function renderQueue(queued) {
    const build = (t) => cells(t.id, ["pos", "id", "prio", "waiting", "age", "prompt-cell"]);
    const update = (row, t, i) => {
      const c = row.cells;
      setText(c[0], String(i + 1));
      setText(c[1], t.id);
      c[2].className = "prio prio-" + t.priority;
      setText(c[2], t.priority);
      setText(c[3], t.waiting ? oneLine(t.waiting, 160) : "a free slot");
      setText(c[4], age(t.created));
      c[5].setAttribute("title", oneLine(t.prompt, 2000));
      setText(c[5], oneLine(t.prompt, 120));
    };
    syncRows($("queue").tBodies[0], queued, build, update);
    $("queue-empty").hidden = queued.length > 0;
  }

  // The fleet's memory (area + line, left axis) and running shadows (dashed, scaled to
  // max_shadows) over the daemon's sampled history.
  function renderChart() {
    const chart = $("chart");
    clear(chart);
    const f = state.fleet;
    const history = f && Array.isArray(f.history) ? f.history : [];
    // Drawn in the chart's own pixels, so text is not stretched.
    const W = Math.max(200, Math.round(chart.clientWidth || 600));
    const H = 160;
    chart.setAttribute("viewBox", "0 0 " + W + " " + H);
    const top = 8;
    const bottom = H - 16;
    for (const frac of [0, 0.5, 1]) {
      const y = bottom - frac * (bottom - top);
      chart.appendChild(svg("line", { class: "grid", x1: 0, x2: W, y1: y, y2: y }));
    }
    const legend = $("chart-legend");
    clear(legend);
    if (history.length === 0) {
      $("chart-caption").textContent = "No samples yet (the daemon takes one every 2 s).";
      chart.setAttribute("data-points", "0");
      return;
    }
    // The scale: the next power of two above the highest sample, with some room.
    const peak = Math.max(1, ...history.map((h) => h.rss_bytes || 0));
    const maxRss = 2 ** Math.ceil(Math.log2(peak * 1.25));
    const maxRunning = Math.max(1, f.max_shadows || 0, ...history.map((h) => h.running || 0));
    const t0 = history[0].unix_ms;
    const t1 = history[history.length - 1].unix_ms;
    const span = Math.max(1, t1 - t0);
    const x = (h) => (history.length === 1 ? W : ((h.unix_ms - t0) / span) * W);
    const yRss = (h) => bottom - ((h.rss_bytes || 0) / maxRss) * (bottom - top);
    const yRun = (h) => bottom - ((h.running || 0) / maxRunning) * (bottom - top);
    const pts = history.map((h) => x(h).toFixed(1) + "," + yRss(h).toFixed(1));
    const area = "0," + bottom + " " + pts.join(" ") + " " + x(history[history.length - 1]).toFixed(1) + "," + bottom;
    chart.appendChild(svg("polygon", { class: "rss-area", points: area }));
    chart.appendChild(svg("polyline", { class: "rss", points: pts.join(" ") }));
    chart.appendChild(
      svg("polyline", {
        class: "running",
        points: history.map((h) => x(h).toFixed(1) + "," + yRun(h).toFixed(1)).join(" "),
      }),
    );
    const label = (x0, y0, text, anchor) => {
      const t = svg("text", { x: x0, y: y0, "text-anchor": anchor || "start" });
      t.textContent = text;
      chart.appendChild(t);
    };
    label(4, top + 10, bytes(maxRss));
    label(4, (top + bottom) / 2 + 4, bytes(maxRss / 2));
    label(4, H - 3, span < 60000 ? "-" + Math.round(span / 1000) + " s" : "-" + Math.round(span / 60000) + " min");
    label(W - 4, H - 3, "now", "end");
    chart.setAttribute("data-points", String(history.length));
    legend.appendChild(el("span", { class: "l-rss" }, "— RSS"));
    legend.appendChild(el("span", { class: "l-run" }, "- - running (of " + maxRunning + ")"));
    const last = history[history.length - 1];
    const minutes = Math.max(1, Math.round(span / 60000));
    $("chart-caption").textContent =
      history.length + " samples over " + (span < 60000 ? Math.round(span / 1000) + " s" : minutes + " min") +
      "; the latest: " + bytes(last.rss_bytes) + " in " + last.running + " running, " + last.queued + " queued";
  }

  // ---- the task panel ----------------------------------------------------------------------

  function openDetail(id) {
    if (state.selected === id && state.detail) return;
    closeDetailStream();
    state.selected = id;
    $("detail").hidden = false;
    $("main").classList.add("with-detail");
    $("detail-id").textContent = id;
    $("answer").hidden = true;
    $("steer-text").value = "";
    clear($("log"));
    clear($("diff"));
    showTab("log");
    state.detail = {
      id,
      es: null,
      lastSeq: 0,
      finished: false,
      backoff: BACKOFF_MIN_MS,
      calls: new Map(), // call_id -> its log line
      text: null, // the line the current turn's text streams into
      lines: 0,
    };
    render();
    openDetailStream();
  }

  function closeDetail() {
    closeDetailStream();
    state.selected = null;
    $("detail").hidden = true;
    $("main").classList.remove("with-detail");
    render();
  }

  function closeDetailStream() {
    const d = state.detail;
    if (d && d.es) d.es.close();
    if (d && d.timer) clearTimeout(d.timer);
    state.detail = null;
  }

  function openDetailStream() {
    const d = state.detail;
    if (!d || d.finished) return;
    const url = "/api/v1/tasks/" + encodeURIComponent(d.id) + "/events" + (d.lastSeq ? "?after=" + d.lastSeq : "");
    const es = new EventSource(url);
    d.es = es;
    es.onopen = () => {
      d.backoff = BACKOFF_MIN_MS;
    };
    es.onmessage = (msg) => {
      if (state.detail !== d) return;
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch (e) {
        return;
      }
      if (typeof ev.seq === "number") {
        if (ev.seq <= d.lastSeq) return; // already shown
        d.lastSeq = ev.seq;
      }
      logEvent(d, ev);
      if (ev.type === "finished") {
        // The stream ends after `finished`; do not let EventSource reconnect.
        d.finished = true;
        es.close();
      }
    };
    es.onerror = () => {
      es.close();
      if (state.detail !== d || d.finished) return;
      // Reconnect from the last event shown, with backoff; a 404 or 401 shows up in the poll.
      d.timer = setTimeout(openDetailStream, d.backoff);
      d.backoff = Math.min(BACKOFF_MAX_MS, d.backoff * 2);
    };
  }

  function logLine(d, cls, ts, ...parts) {
    const log = $("log");
    const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const line = el("div", { class: "line " + cls }, el("span", { class: "ts" }, clock(ts)), ...parts);
    log.appendChild(line);
    d.lines += 1;
    while (d.lines > LOG_MAX_LINES && log.firstChild) {
      log.removeChild(log.firstChild);
      d.lines -= 1;
    }
    if (stick) log.scrollTop = log.scrollHeight;
    return line;
  }

  function logEvent(d, ev) {
    switch (ev.type) {
      case "queued":
        logLine(d, "note", ev.ts, "queued (" + ev.priority + ")");
        break;
      case "started":
        logLine(d, "note", ev.ts, "started: attempt " + ev.attempt + ", pid " + ev.pid + ", " + (ev.model || "") + (ev.branch ? ", branch " + ev.branch : ""));
        break;
      case "turn_start":
        d.text = null;
        logLine(d, "turn", ev.ts, "turn " + ev.turn);
        break;
      case "text_delta":
        if (!d.text) d.text = logLine(d, "text", ev.ts, el("span", { class: "body" }));
        d.text.lastChild.textContent += ev.text || "";
        break;
      case "retry":
        // The deltas of the failed attempt are void.
        if (d.text) d.text.lastChild.textContent = "";
        logLine(d, "note", ev.ts, "retry " + ev.attempt + " in " + ev.wait_ms + " ms: " + oneLine(ev.reason, 300));
        break;
      case "assistant_message":
        if (!d.text) d.text = logLine(d, "text", ev.ts, el("span", { class: "body" }));
        d.text.lastChild.textContent = ev.text || "";
        d.text = null;
        break;
      case "tool_start": {
        d.text = null;
        const line = logLine(
          d,
          "tool",
          ev.ts,
          el("span", { class: "name" }, "▶ " + ev.tool + " "),
          el("span", { class: "args" }, shortArgs(ev.tool, ev.args)),
          el("span", { class: "outcome" }, " …"),
        );
        line.setAttribute("data-call", String(ev.call_id));
        d.calls.set(ev.call_id, line);
        break;
      }
      case "tool_end": {
        let line = d.calls.get(ev.call_id);
        if (!line) line = logLine(d, "tool", ev.ts, el("span", { class: "name" }, "▶ " + ev.tool + " "), el("span", { class: "outcome" }, ""));
        const outcome = line.querySelector(".outcome");
        outcome.textContent = (ev.ok ? "  ✓ " : "  ✗ ") + ev.duration_ms + " ms" + (ev.truncated ? " (output truncated)" : "");
        outcome.classList.add(ev.ok ? "ok" : "bad");
        const out = String(ev.output || "");
        if (out.trim()) {
          line.appendChild(
            el("div", { class: "output" }, out.length > OUTPUT_PREVIEW_CHARS ? out.slice(0, OUTPUT_PREVIEW_CHARS) + "…" : out),
          );
        }
        d.calls.delete(ev.call_id);
        break;
      }
      case "turn_end": {
        const u = ev.usage || {};
        logLine(d, "note", ev.ts, "turn " + ev.turn + " done: " + tokens(u.input_tokens) + " in, " + tokens(u.output_tokens) + " out" + (u.cost_usd !== undefined ? ", " + cost(u) : ""));
        break;
      }
      case "compaction":
        logLine(d, "note", ev.ts, "compaction " + (ev.ok ? "" : "abandoned ") + tokens(ev.tokens_before) + " → " + tokens(ev.tokens_after) + " tokens");
        break;
      case "steered":
        d.text = null;
        logLine(d, "steered", ev.ts, "steered: " + (ev.text || ""));
        break;
      case "restarted":
        logLine(d, "restarted", ev.ts, "restarted (attempt " + ev.attempt + "): " + oneLine(ev.reason, 300));
        break;
      case "memory_limit":
        logLine(d, "memory_limit", ev.ts, "memory limit: " + bytes(ev.rss_bytes) + " of " + bytes(ev.limit_bytes) + (ev.killed ? ", killed" : ""));
        break;
      case "rate_limited":
        logLine(d, "rate_limited", ev.ts, "rate limited by " + ev.provider + ", waiting ~" + ev.wait_ms + " ms");
        break;
      case "conflict":
        logLine(d, "conflict", ev.ts, "conflict with " + (ev.with || []).join(", ") + " in " + (ev.files || []).join(", "));
        break;
      case "finished": {
        d.text = null;
        const line = logLine(d, "finished", ev.ts, "finished: ", statusNode(ev.status), " after " + ev.turns + " turns, " + ev.restarts + " restarts");
        if (ev.result) line.appendChild(el("div", { class: "output" }, String(ev.result)));
        if (ev.error) line.appendChild(el("div", { class: "output" }, "error: " + String(ev.error)));
        if (Array.isArray(ev.changed_files) && ev.changed_files.length) {
          line.appendChild(el("div", { class: "output" }, "changed: " + ev.changed_files.join(", ")));
        }
        break;
      }
      default:
        logLine(d, "note", ev.ts, ev.type);
    }
  }

  function renderDetailFacts() {
    const t = state.tasks.get(state.selected);
    const status = $("detail-status");
    if (!t) {
      status.textContent = "";
      return;
    }
    status.textContent = t.status;
    status.className = "status st-" + t.status;
    $("detail-prompt").textContent = t.prompt;
    const facts = $("detail-facts");
    clear(facts);
    const add = (k, v) => {
      if (v === undefined || v === null || v === "") return;
      facts.appendChild(el("dt", null, k));
      facts.appendChild(el("dd", null, String(v)));
    };
    add("model", t.model);
    add("repo", t.repo);
    add("branch", t.branch);
    add("worktree", t.worktree);
    add("attempt", t.attempt + (t.restarts ? " (" + t.restarts + " restarts)" : ""));
    if (t.waiting) add("waiting", t.waiting);
    if (t.conflicts) {
      add(
        "conflicts",
        Object.entries(t.conflicts)
          .map(([k, v]) => k + ": " + (Array.isArray(v) ? v.join(", ") : v))
          .join("; "),
      );
    }
    if (t.merged) add("merged", "into " + t.merged.into + " at " + String(t.merged.commit).slice(0, 12));
    add("error", t.error);
    const live = LIVE.has(t.status) || t.status === "queued";
    $("steer-button").disabled = !live;
    $("steer-text").disabled = !live;
    $("cancel-button").disabled = !live;
    $("merge-button").disabled = live;
  }

  function showTab(which) {
    $("tab-log").classList.toggle("active", which === "log");
    $("tab-diff").classList.toggle("active", which === "diff");
    $("log").hidden = which !== "log";
    $("diff").hidden = which !== "diff";
  }

  function answer(parts, bad) {
    const box = $("answer");
    clear(box);
    for (const p of parts) box.appendChild(typeof p === "string" ? el("div", null, p) : p);
    box.classList.toggle("bad", Boolean(bad));
    box.hidden = false;
  }

  function failure(what, e) {
    answer([what + " failed: " + e.message + (e.code ? " (" + e.code + ")" : "")], true);
  }

  async function steer(ev) {
    ev.preventDefault();
    const id = state.selected;
    const text = $("steer-text").value;
    if (!id) return;
    if (!text.trim()) {
      answer(["Type a message to steer with first."], true);
      return;
    }
    try {
      await api("POST", "/api/v1/tasks/" + encodeURIComponent(id) + "/steer", { text });
      $("steer-text").value = "";
      answer(["Steering accepted: the model gets it at its next turn boundary (a “steered” line in the log)."]);
    } catch (e) {
      failure("Steer", e);
    }
  }

  async function cancel() {
    const id = state.selected;
    if (!id) return;
    try {
      const res = await api("POST", "/api/v1/tasks/" + encodeURIComponent(id) + "/cancel");
      answer(["Cancel: " + (res && res.status ? res.status : "sent")]);
      refreshSoon();
    } catch (e) {
      failure("Cancel", e);
    }
  }

  async function merge(ev) {
    ev.preventDefault();
    const id = state.selected;
    if (!id) return;
    const into = $("merge-into").value.trim();
    const button = $("merge-button");
    button.disabled = true;
    answer(["Merging… (a test command may take a while)"]);
    try {
      const report = await api("POST", "/api/v1/tasks/" + encodeURIComponent(id) + "/merge", into ? { into } : {});
      const parts = [];
      let bad = false;
      for (const l of (report && report.landed) || []) {
        parts.push(
          el("div", { class: "landed" }, "Landed " + l.task + " on " + l.into + " at " + String(l.commit).slice(0, 12) + " (" + l.commits + " commit" + (l.commits === 1 ? "" : "s") + ")" + (l.checkout ? "; checkout " + l.checkout + " updated" : "")),
        );
      }
      for (const r of (report && report.refused) || []) {
        bad = true;
        const line = el("div", { class: "refused" }, "Refused " + r.task + " (" + r.reason + "): " + r.message);
        if (Array.isArray(r.files) && r.files.length) line.appendChild(el("div", { class: "files" }, r.files.join("\n")));
        if (r.output) line.appendChild(el("div", { class: "files" }, String(r.output)));
        parts.push(line);
      }
      if (!parts.length) parts.push("The merge report was empty.");
      answer(parts, bad);
      refreshSoon();
    } catch (e) {
      failure("Merge", e);
    } finally {
      renderDetailFacts();
    }
  }

  async function showDiff() {
    showTab("diff");
    const id = state.selected;
    const box = $("diff");
    clear(box);
    box.appendChild(el("div", { class: "dl meta" }, "loading the diff…"));
    let res;
    try {
      res = await api("GET", "/api/v1/tasks/" + encodeURIComponent(id) + "/diff");
    } catch (e) {
      clear(box);
      box.appendChild(el("div", { class: "dl del" }, "diff failed: " + e.message));
      return;
    }
    if (state.selected !== id) return;
    clear(box);
    box.appendChild(el("div", { class: "dl meta" }, "against " + String(res.base).slice(0, 12) + " (from the task's " + res.source + ")"));
    const text = String(res.diff || "");
    if (!text) {
      box.appendChild(el("div", { class: "dl meta" }, "no changes"));
      return;
    }
    const lines = text.split("\n");
    const frag = document.createDocumentFragment();
    let inHeader = false;
    lines.slice(0, DIFF_MAX_LINES).forEach((l) => {
      let cls = "ctx";
      if (l.startsWith("diff --git")) {
        cls = "file";
        inHeader = true;
      } else if (l.startsWith("@@")) {
        cls = "hunk";
        inHeader = false;
      } else if (inHeader) cls = "meta";
      else if (l.startsWith("+")) cls = "add";
      else if (l.startsWith("-")) cls = "del";
      frag.appendChild(el("div", { class: "dl " + cls }, l || " "));
    });
    box.appendChild(frag);
    if (lines.length > DIFF_MAX_LINES) {
      box.appendChild(el("div", { class: "dl meta" }, "… " + (lines.length - DIFF_MAX_LINES) + " more lines not shown (kugetsu diff " + id + " has them all)"));
    }
  }

  // ---- start -------------------------------------------------------------------------------

  function start() {
    $("detail-close").addEventListener("click", closeDetail);
    $("steer-form").addEventListener("submit", steer);
    $("merge-form").addEventListener("submit", merge);
    $("cancel-button").addEventListener("click", cancel);
    $("tab-log").addEventListener("click", () => showTab("log"));
    $("tab-diff").addEventListener("click", showDiff);
    // Ages tick between polls.
    setInterval(() => {
      for (const cell of document.querySelectorAll("tr[data-task] td.age")) {
        const t = state.tasks.get(cell.parentNode.getAttribute("data-task"));
        if (t) cell.textContent = age(t.created);
      }
    }, 1000);
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
