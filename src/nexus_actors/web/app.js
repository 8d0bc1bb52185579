// The built-in table page: a start screen (create or join a room) and the table
// (grid, tokens, cursors, scenes, players, host controls, chat, connection badge,
// toasts). Everything it knows comes from one Session of nexus-client.js; it only
// draws the session's state and turns clicks into the session's sends.

import {Refused, Session, forgetSeat, pageSocketUrl, savedSeat} from "./nexus-client.js";

const DEFAULT_COLS = 12;
const DEFAULT_ROWS = 8;
const TOAST_MS = 6000;
const TOKEN_COLORS = ["#e4572e", "#f3a712", "#29335c", "#669bbc", "#2a9d8f", "#8338ec", "#c1121f", "#3a5a40"];
const CURSOR_COLORS = ["#7b2cbf", "#d00070", "#0077b6", "#2b9348", "#e85d04", "#6a4c93"];
const ROLE_NAMES = {host: "Host", "co-host": "Co-host", player: "Player"};
const REASONS = {
  "version-conflict": "someone else moved it first",
  forbidden: "you are not allowed to",
  "not-found": "it no longer exists",
  invalid: "the move is not valid",
  timeout: "the server did not answer in time",
};

/** @param {string} testid @returns {any} */
const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

/** @type {Session | null} */
let session = null;
/** @type {number | null} */
let reconnectingAttempt = null;
/** Names of members seen, to name those who left. @type {Map<string, string>} */
const names = new Map();
/** The token being dragged: its id and where it is shown. @type {{id: string, x: number, y: number, pointerId: number} | null} */
let drag = null;
let renderQueued = false;

// Small DOM helpers -------------------------------------------------------------------

/**
 * @param {string} tag @param {Record<string, string>} [attributes] @param {...(Node | string)} children
 * @returns {any}
 */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

/** @param {string} text @param {"info" | "success" | "warning" | "error"} [kind] */
function toast(text, kind = "info") {
  const item = el("div", {class: "toast", "data-testid": "toast", "data-kind": kind, text});
  $("toasts").append(item);
  setTimeout(() => item.remove(), kind === "error" ? TOAST_MS * 1.5 : TOAST_MS);
}

/** @param {string} id */
function nameOf(id) {
  return names.get(id) ?? "Someone";
}

/** @param {string} text @returns {number} */
function hash(text) {
  let h = 0;
  for (const c of text) h = (h * 31 + (c.codePointAt(0) ?? 0)) >>> 0;
  return h;
}

// Screens -----------------------------------------------------------------------------

/** @param {string} [message] */
function showStart(message) {
  $("table").hidden = true;
  $("start").hidden = false;
  $("start-connecting").hidden = true;
  const error = $("start-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  const seat = savedSeat();
  $("resume-card").hidden = seat === null;
  if (seat !== null) $("resume-text").textContent = `You have a seat in room ${seat.roomCode}.`;
  document.title = "Nexus table";
  const code = new URLSearchParams(location.search).get("room");
  if (code && !$("join-code").value) $("join-code").value = code.toUpperCase().slice(0, 4);
}

function showTable() {
  $("start").hidden = true;
  $("table").hidden = false;
}

/** A refusal or failure, in words. @param {unknown} error */
function describe(error) {
  if (error instanceof Refused) {
    switch (error.code) {
      case "room-not-found": return "There is no room with that code.";
      case "room-full": return "That room is full.";
      case "invalid-token": return "That seat no longer exists.";
      case "bad-request": return `The server refused the request: ${error.message}`;
      case "rate-limited": return "Too many attempts: wait a few seconds and try again.";
      default: return `The server refused: ${error.message || error.code}`;
    }
  }
  if (error instanceof Error) return `Could not reach the server (${error.message}).`;
  return "Could not reach the server.";
}

/** @param {boolean} enabled */
function startButtons(enabled) {
  for (const button of document.querySelectorAll("#start button")) {
    /** @type {HTMLButtonElement} */ (button).disabled = !enabled;
  }
}

/**
 * Open a session and show the table once the seat is granted.
 * @param {import("./nexus-client.js").Target} target
 */
async function enter(target) {
  $("start-error").hidden = true;
  $("start-connecting").hidden = false;
  startButtons(false);
  const created = new Session(pageSocketUrl(), target);
  session = created;
  reconnectingAttempt = null;
  listen(created);
  try {
    await created.start();
  } catch (error) {
    if (session === created) session = null;
    startButtons(true);
    showStart(describe(error));
    return;
  }
  startButtons(true);
  Object.assign(window, {nexus: {session: created}});  // for the browser console
  history.replaceState(null, "", `/?room=${created.roomCode}`);
  document.title = `Room ${created.roomCode} · Nexus table`;
  showTable();
  const state = created.state;
  if (target.role === "host" && state && Object.keys(state.scenes).length === 0) {
    setUpTable(created);
    toast(`Room ${created.roomCode} is ready: give this code to your players`, "success");
  }
  render();
}

/** A new room gets a scene with a few tokens to play with. @param {Session} s */
function setUpTable(s) {
  const scene = s.createScene("Table", {cols: DEFAULT_COLS, rows: DEFAULT_ROWS});
  s.activateScene(scene.entityId);
  [[1, 1], [3, 2], [5, 4]].forEach(([x, y], i) => {
    s.createToken(scene.entityId, x, y, {label: String.fromCharCode(65 + i), color: TOKEN_COLORS[i]});
  });
}

// What the session says ---------------------------------------------------------------

/** @param {Session} s */
function listen(s) {
  const on = (/** @type {string} */ type, /** @type {(detail: any) => void} */ handler) =>
    s.addEventListener(type, (event) => {
      if (session === s) handler(/** @type {CustomEvent} */ (event).detail);
    });
  on("change", () => scheduleRender());
  on("connectionQuality", (q) => {
    if (q.status !== "disconnected") reconnectingAttempt = null;
    renderBadge();
  });
  on("reconnecting", (d) => {
    if (d.attempt === 1) toast("Connection lost: reconnecting…", "warning");
    reconnectingAttempt = d.attempt;
    renderBadge();
  });
  on("reconnected", (d) => {
    reconnectingAttempt = null;
    toast(d.mode === "resume" ? "Reconnected" : "Reconnected (the table was reloaded)", "success");
    renderBadge();
  });
  on("reconnectionFailed", (d) => {
    reconnectingAttempt = null;
    session = null;
    showStart(d.code === "attempts-exhausted"
      ? "The connection was lost and could not be restored." : describe(new Refused(d.message, d.code)));
  });
  on("ended", (d) => {
    session = null;
    const why = {left: "You left the room.", kicked: "You were removed from the room.",
      superseded: "Your seat was opened in another tab or window."};
    showStart(/** @type {Record<string, string>} */ (why)[d.reason] ?? `The room closed (${d.reason}).`);
  });
  on("hostMigrated", (d) => {
    if (d.mine) toast("You are now the host", "success");
    else toast(`${nameOf(d.newHostId)} is now the host`);
  });
  on("event", (d) => {
    if (d.replayed) return;
    const data = d.data;
    const me = s.memberId;
    switch (d.name) {
      case "session/join":
        names.set(data.player.id, data.player.name);
        if (!d.mine) toast(`${data.player.name} joined`);
        break;
      case "session/co-host-added":
        toast(data.coHostId === me ? "You are now a co-host" : `${nameOf(data.coHostId)} is now a co-host`,
          data.coHostId === me ? "success" : "info");
        break;
      case "session/co-host-removed":
        toast(data.coHostId === me ? "You are no longer a co-host"
          : `${nameOf(data.coHostId)} is no longer a co-host`);
        break;
      case "session/leave":
        if (data.uuid !== me) toast(`${nameOf(data.uuid)} left`);
        break;
      case "session/kicked":
        if (data.playerId !== me) toast(`${nameOf(data.playerId)} was removed from the room`);
        break;
      default:
        break;
    }
  });
  on("rolledBack", (d) => {
    const why = /** @type {Record<string, string>} */ (REASONS)[d.reason] ?? d.reason;
    const what = d.name === "token/move" ? "Move" : "Change";
    toast(d.reason === "timeout" ? `${what} not confirmed: ${why}` : `${what} refused: ${why}`,
      "warning");
    const token = document.querySelector(`.token[data-token-id="${CSS.escape(d.entityId)}"]`);
    if (token) {
      token.classList.remove("snapped");
      void token.getBoundingClientRect().width;  // restart the animation
      token.classList.add("snapped");
    }
  });
  on("refused", (d) => toast(`Refused: ${d.message || d.code}`, "error"));
  on("error", (d) => toast(`Server: ${d.message || d.code}`, "error"));
}

// Drawing -----------------------------------------------------------------------------

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    render();
  });
}

function render() {
  const s = session;
  const state = s?.state;
  if (!s || !state || $("table").hidden) return;
  for (const member of s.members) names.set(member.id, member.name);
  $("room-code").textContent = s.roomCode ?? "";
  const me = s.members.find((m) => m.id === s.memberId);
  $("me").textContent = me ? `${me.name} · ${ROLE_NAMES[me.role]}` : "";
  renderBadge();
  renderScenes(s, state);
  renderGrid(s, state);
  renderPlayers(s);
  renderChat(state);
}

function renderBadge() {
  const badge = $("status-badge");
  const s = session;
  let status;
  let text;
  if (reconnectingAttempt !== null) {
    status = "reconnecting";
    text = `Reconnecting… attempt ${reconnectingAttempt}`;
  } else if (!s || s.quality.status === "disconnected" || s.quality.latency === null) {
    status = s?.ended ? "offline" : "connecting";
    text = s?.ended ? "Offline" : "Connecting…";
  } else {
    status = s.quality.status;
    text = `${Math.round(s.quality.latency)} ms`;
  }
  badge.dataset.status = status;
  badge.textContent = text;
  badge.setAttribute("aria-label", status === "reconnecting" || status === "connecting" || status === "offline"
    ? `Connection: ${text}` : `Connection ${status}, latency ${text}`);
}

/** @param {Session} s @param {any} state */
function renderScenes(s, state) {
  const canEdit = s.permissions.canEditScenes;
  const select = $("scene-select");
  const scenes = Object.values(state.scenes);
  $("scene-select-label").hidden = !canEdit;
  select.hidden = !canEdit;
  $("new-scene").hidden = !canEdit;
  const active = state.activeSceneId ? state.scenes[state.activeSceneId] : null;
  $("scene-name").textContent = canEdit ? "" : (active ? active.name : "No scene");
  $("add-token").hidden = !active;
  if (canEdit) {
    const signature = JSON.stringify([scenes.map((sc) => [sc.id, sc.name]), state.activeSceneId]);
    if (select.dataset.signature !== signature) {
      select.dataset.signature = signature;
      select.replaceChildren(...(active ? [] : [el("option", {value: "", text: "Choose a scene"})]),
        ...scenes.map((sc) => el("option", {value: sc.id, text: sc.name})));
      select.value = state.activeSceneId ?? "";
    }
  }
}

/** @param {any} state */
function activeScene(state) {
  return state.activeSceneId ? state.scenes[state.activeSceneId] ?? null : null;
}

/** @param {any} scene */
function gridSize(scene) {
  const cols = Number.isInteger(scene?.cols) && scene.cols > 0 ? scene.cols : DEFAULT_COLS;
  const rows = Number.isInteger(scene?.rows) && scene.rows > 0 ? scene.rows : DEFAULT_ROWS;
  return {cols, rows};
}

/** @param {Session} s @param {any} state */
function renderGrid(s, state) {
  const grid = $("grid");
  const scene = activeScene(state);
  const {cols, rows} = gridSize(scene);
  grid.style.setProperty("--cols", String(cols));
  grid.style.setProperty("--rows", String(rows));
  $("no-scene").hidden = scene !== null;
  const tokens = scene ? Object.values(state.tokens).filter((t) => t.sceneId === scene.id) : [];
  const seen = new Set();
  for (const token of tokens) {
    seen.add(token.id);
    let node = grid.querySelector(`.token[data-token-id="${CSS.escape(token.id)}"]`);
    if (!node) {
      node = el("button", {type: "button", class: "token", "data-testid": "token", "data-token-id": token.id},
        el("span", {"aria-hidden": "true"}));
      grid.append(node);
    }
    const label = String(token.label ?? "?").slice(0, 3);
    node.firstChild.textContent = label;
    node.dataset.label = label;
    node.style.setProperty("--color", typeof token.color === "string" ? token.color : TOKEN_COLORS[hash(token.id) % TOKEN_COLORS.length]);
    const x = Math.round(token.position.x);
    const y = Math.round(token.position.y);
    node.dataset.x = String(x);
    node.dataset.y = String(y);
    node.dataset.version = String(token.version);
    node.setAttribute("aria-label", `Token ${label} at column ${x + 1}, row ${y + 1}`);
    const pending = s.room?.tokens[token.id];
    node.classList.toggle("pending", !!pending && pending.version !== token.version);
    if (drag?.id !== token.id) {
      node.style.setProperty("--x", String(token.position.x));
      node.style.setProperty("--y", String(token.position.y));
    }
  }
  for (const node of grid.querySelectorAll(".token")) {
    if (!seen.has(node.dataset.tokenId)) node.remove();
  }
  // Other members' cursors on this scene.
  const cursors = Object.values(s.cursors).filter((c) => scene && c.sceneId === scene.id);
  const shown = new Set();
  for (const cursor of cursors) {
    shown.add(cursor.userId);
    let node = grid.querySelector(`.cursor[data-member-id="${CSS.escape(cursor.userId)}"]`);
    if (!node) {
      node = el("div", {class: "cursor", "data-testid": "cursor", "data-member-id": cursor.userId,
        "aria-hidden": "true"}, el("span"));
      node.style.setProperty("--color", CURSOR_COLORS[hash(cursor.userId) % CURSOR_COLORS.length]);
      grid.append(node);
    }
    node.firstChild.textContent = cursor.userName;
    node.dataset.name = cursor.userName;
    node.style.setProperty("--x", String(cursor.x));
    node.style.setProperty("--y", String(cursor.y));
  }
  for (const node of grid.querySelectorAll(".cursor")) {
    if (!shown.has(node.dataset.memberId)) node.remove();
  }
}

/** @param {Session} s */
function renderPlayers(s) {
  const list = $("players");
  const mine = s.permissions;
  const primary = s.role === "host";
  const signature = JSON.stringify([s.members, s.memberId, mine, primary]);
  if (list.dataset.signature === signature) return;
  list.dataset.signature = signature;
  list.replaceChildren(...s.members.map((member) => {
    const you = member.id === s.memberId;
    const item = el("li", {class: "player", "data-testid": "player", "data-member-id": member.id,
      "data-name": member.name, "data-role": member.role, "data-connected": String(member.connected)},
    el("span", {class: "dot", "aria-hidden": "true"}),
    el("span", {class: "name", text: member.name + (you ? " (you)" : "")}),
    el("span", {class: "role", "data-testid": "player-role", text: ROLE_NAMES[member.role]}),
    el("span", {class: "state", "data-testid": "player-connected",
      text: member.connected ? "online" : "offline"}));
    if (!you) {
      /** @type {HTMLElement[]} */
      const controls = [];
      const button = (/** @type {string} */ testid, /** @type {string} */ text,
        /** @type {string} */ label, /** @type {() => void} */ action) => {
        const b = el("button", {type: "button", class: "small quiet", "data-testid": testid,
          "aria-label": label, text});
        b.addEventListener("click", () => send(action));
        controls.push(b);
      };
      if (mine.canTransferHost && member.connected && member.role !== "host") {
        button("make-host", "Make host", `Make ${member.name} the host`, () => s.transferHost(member.id));
      }
      if (primary && member.role === "player") {
        button("make-co-host", "Make co-host", `Make ${member.name} a co-host`, () => s.addCoHost(member.id));
      }
      if (primary && member.role === "co-host") {
        button("remove-co-host", "Remove co-host", `Remove ${member.name} as co-host`,
          () => s.removeCoHost(member.id));
      }
      if (mine.canManagePlayers && member.role !== "host") {
        button("kick", "Kick", `Remove ${member.name} from the room`, () => s.kick(member.id));
      }
      if (controls.length) item.append(el("span", {class: "controls"}, ...controls));
    }
    return item;
  }));
}

/** @param {any} state */
function renderChat(state) {
  const log = $("chat-log");
  const last = state.chat.at(-1);
  const signature = `${state.chat.length}:${last?.id ?? ""}`;
  if (log.dataset.signature === signature) return;
  log.dataset.signature = signature;
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.replaceChildren(...state.chat.map((/** @type {any} */ m) => el("li", {"data-testid": "chat-message"},
    el("span", {class: "who", text: `${m.userName}:`}), el("span", {class: "text", text: m.text}))));
  if (atBottom) log.scrollTop = log.scrollHeight;
}

// What the user does ------------------------------------------------------------------

/** Run a send; a refusal to queue it (outbox full, session over) becomes a toast. @param {() => unknown} action */
function send(action) {
  try {
    action();
  } catch (error) {
    toast(error instanceof Error ? error.message : String(error), "error");
  }
}

/** Grid coordinates (in cells, fractional) of a pointer event. @param {PointerEvent} event */
function gridPoint(event) {
  const grid = $("grid");
  const box = grid.getBoundingClientRect();
  const state = session?.state;
  const {cols, rows} = gridSize(state ? activeScene(state) : null);
  return {x: ((event.clientX - box.left) / box.width) * cols,
    y: ((event.clientY - box.top) / box.height) * rows, cols, rows};
}

/** @param {number} value @param {number} limit */
const cell = (value, limit) => Math.min(limit - 1, Math.max(0, Math.floor(value)));

function wireTable() {
  const grid = $("grid");
  grid.addEventListener("pointermove", (/** @type {PointerEvent} */ event) => {
    const s = session;
    const state = s?.state;
    const scene = state ? activeScene(state) : null;
    if (!s || !scene || s.ended) return;
    const point = gridPoint(event);
    send(() => s.updateCursor(scene.id, Math.round(point.x * 100) / 100, Math.round(point.y * 100) / 100));
    if (drag && drag.pointerId === event.pointerId) {
      const node = grid.querySelector(`.token[data-token-id="${CSS.escape(drag.id)}"]`);
      drag.x = Math.min(point.cols - 1, Math.max(0, point.x - 0.5));
      drag.y = Math.min(point.rows - 1, Math.max(0, point.y - 0.5));
      node?.style.setProperty("--x", String(drag.x));
      node?.style.setProperty("--y", String(drag.y));
    }
  });
  grid.addEventListener("pointerdown", (/** @type {PointerEvent} */ event) => {
    const node = /** @type {HTMLElement | null} */ (/** @type {HTMLElement} */ (event.target).closest(".token"));
    if (!node || !session || event.button !== 0) return;
    event.preventDefault();
    node.focus();
    grid.setPointerCapture(event.pointerId);
    drag = {id: /** @type {string} */ (node.dataset.tokenId), x: Number(node.dataset.x),
      y: Number(node.dataset.y), pointerId: event.pointerId};
    node.classList.add("dragging");
  });
  const drop = (/** @type {PointerEvent} */ event, /** @type {boolean} */ cancelled) => {
    if (!drag || drag.pointerId !== event.pointerId) return;
    const moved = drag;
    drag = null;
    const node = grid.querySelector(`.token[data-token-id="${CSS.escape(moved.id)}"]`);
    node?.classList.remove("dragging");
    const s = session;
    const token = s?.state?.tokens[moved.id];
    if (s && token && !cancelled) {
      const point = gridPoint(event);
      const x = cell(point.x, point.cols);
      const y = cell(point.y, point.rows);
      if (x !== Math.round(token.position.x) || y !== Math.round(token.position.y)) {
        send(() => s.moveToken(moved.id, x, y));
      }
    }
    render();
  };
  grid.addEventListener("pointerup", (/** @type {PointerEvent} */ event) => drop(event, false));
  grid.addEventListener("pointercancel", (/** @type {PointerEvent} */ event) => drop(event, true));
  grid.addEventListener("keydown", (/** @type {KeyboardEvent} */ event) => {
    const node = /** @type {HTMLElement} */ (event.target).closest(".token");
    const steps = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1]};
    const step = /** @type {Record<string, number[]>} */ (steps)[event.key];
    const s = session;
    const state = s?.state;
    if (!node || !step || !s || !state) return;
    event.preventDefault();
    const token = state.tokens[/** @type {string} */ (/** @type {HTMLElement} */ (node).dataset.tokenId)];
    const {cols, rows} = gridSize(activeScene(state));
    if (!token) return;
    const x = cell(Math.round(token.position.x) + step[0], cols);
    const y = cell(Math.round(token.position.y) + step[1], rows);
    if (x !== Math.round(token.position.x) || y !== Math.round(token.position.y)) {
      send(() => s.moveToken(token.id, x, y));
    }
  });

  $("scene-select").addEventListener("change", (/** @type {Event} */ event) => {
    const value = /** @type {HTMLSelectElement} */ (event.target).value;
    const s = session;
    if (s && value) send(() => s.activateScene(value));
  });
  $("new-scene").addEventListener("click", () => {
    const s = session;
    if (!s || !s.state) return;
    const name = `Scene ${Object.keys(s.state.scenes).length + 1}`;
    send(() => {
      const scene = s.createScene(name, {cols: DEFAULT_COLS, rows: DEFAULT_ROWS});
      s.activateScene(scene.entityId);
    });
  });
  $("add-token").addEventListener("click", () => {
    const s = session;
    const state = s?.state;
    const scene = state ? activeScene(state) : null;
    if (!s || !state || !scene) return;
    const {cols, rows} = gridSize(scene);
    const taken = new Set(Object.values(state.tokens).filter((t) => t.sceneId === scene.id)
      .map((t) => `${Math.round(t.position.x)},${Math.round(t.position.y)}`));
    let free = 0;
    while (free < cols * rows && taken.has(`${free % cols},${Math.floor(free / cols)}`)) free += 1;
    const count = Object.values(state.tokens).length;
    send(() => s.createToken(scene.id, free % cols, Math.floor(free / cols) % rows, {
      label: count < 26 ? String.fromCharCode(65 + count) : String(count + 1),
      color: TOKEN_COLORS[count % TOKEN_COLORS.length]}));
  });
  $("chat-form").addEventListener("submit", (/** @type {Event} */ event) => {
    event.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    const s = session;
    if (!s || !text) return;
    send(() => s.chat(text));
    input.value = "";
  });
  $("leave").addEventListener("click", () => {
    const s = session;
    if (!s) return;
    send(() => { void s.leave(); });
  });
  $("copy-link").addEventListener("click", async () => {
    const link = `${location.origin}/?room=${session?.roomCode ?? ""}`;
    try {
      await navigator.clipboard.writeText(link);
      toast("Link copied");
    } catch {
      toast(`Share this link: ${link}`);
    }
  });
}

function wireStart() {
  $("create-form").addEventListener("submit", (/** @type {Event} */ event) => {
    event.preventDefault();
    const name = $("create-name").value.trim();
    if (name) void enter({role: "host", name});
  });
  $("join-form").addEventListener("submit", (/** @type {Event} */ event) => {
    event.preventDefault();
    const room = $("join-code").value.trim().toUpperCase();
    const name = $("join-name").value.trim();
    if (room && name) void enter({room, name});
  });
  $("resume-seat").addEventListener("click", () => {
    const seat = savedSeat();
    if (seat) void enter({room: seat.roomCode, token: seat.token});
  });
  $("forget-seat").addEventListener("click", () => {
    forgetSeat();
    showStart();
  });
}

wireStart();
wireTable();
const seat = savedSeat();
if (seat) {
  $("start").hidden = false;
  void enter({room: seat.roomCode, token: seat.token});
} else {
  showStart();
}
