// nexus-client.js: a browser client for the nexus-actors room server, protocol v1.
//
// One ES module, no dependencies, no build step. It behaves like the Python client
// (nexus_actors.client, docs/client.md): one Session holds one seat in one room and
// keeps it. It reconnects by itself (exponential backoff with full jitter, never
// sooner than the server's backoff hint, never after a terminal close code), resumes
// with the seat's token, lastSeenSequence and epoch, sends again every durable event
// the server has not answered (same eventId), shows optimistic updates at once and
// settles them on the server's answer, and keeps its own copy of the room, changed
// only by the server's own rules (a port of the apply side of
// nexus_actors/room/events.py), strictly in serverSequence order.
//
// Everything the application needs to know is dispatched as a CustomEvent on the
// Session (an EventTarget); `detail` holds the fields listed in docs/browser.md.
// Durations are milliseconds everywhere.

/** @typedef {"host" | "co-host" | "player"} Role */
/** @typedef {"excellent" | "good" | "fair" | "poor" | "disconnected"} Status */
/** @typedef {"resume" | "baseline"} ResumeMode */

/**
 * @typedef {object} Permissions
 * @property {boolean} canEditScenes      scene/* events
 * @property {boolean} canManagePlayers   session/kick
 * @property {boolean} canControlInitiative initiative/* events
 * @property {boolean} canTransferHost    session/transfer-host
 */

/**
 * @typedef {object} Member
 * @property {string} id
 * @property {string} name
 * @property {Role} role
 * @property {boolean} connected
 */

/**
 * @typedef {object} Cursor
 * @property {string} userId
 * @property {string} userName
 * @property {string} sceneId
 * @property {number} x
 * @property {number} y
 */

/**
 * @typedef {object} ConnectionQuality
 * @property {number | null} latency  round trip in milliseconds; null while disconnected
 * @property {Status} status
 */

/**
 * @typedef {object} BackoffOptions
 * @property {number} baseMs       ceiling of the first attempt's wait (1000)
 * @property {number} capMs        the ceiling never grows past this (30000)
 * @property {number} maxAttempts  attempts after one lost connection before giving up (5)
 */

/**
 * @typedef {object} Options
 * @property {BackoffOptions} backoff
 * @property {number} outboxLimit        durable events waiting for answers at most (256)
 * @property {number} updateTimeoutMs    before an unanswered optimistic update is rolled back (5000)
 * @property {number} maxHeld            events that may wait behind a gap (1000)
 * @property {number} gapTimeoutMs       before a gap that did not fill makes the session resume (10000)
 * @property {number} idleTimeoutMs      without a message from the server before the connection counts as dead (40000)
 * @property {number} connectTimeoutMs   to open a connection and be seated (10000)
 * @property {number} closeTimeoutMs     to finish a closing handshake (2000)
 * @property {number} heartbeatIntervalMs client heartbeats while seated, for a fresh latency (15000; 0: only one per connection)
 * @property {number} cursorHz           cursor updates sent per second at most (20)
 * @property {number} sendRate           messages per second on average (50)
 * @property {number} sendBurst          messages at once at most (100)
 * @property {number} chatHistory        chat messages the room keeps (100)
 */

/**
 * @typedef {object} Target
 * @property {string | null} [room]   room code: join it, resume a seat in it, or create it (role "host")
 * @property {string | null} [name]   display name (create and join)
 * @property {"host" | "player"} [role] "host" creates a room
 * @property {string | null} [token]  a seat's resume token: take that seat back
 * @property {Partial<Options>} [options]
 * @property {Storage | null} [storage] where the seat (room code and newest token) is kept so a
 *   page reload can resume it; default sessionStorage, null: nowhere
 * @property {() => number} [random]  uniform [0, 1) for backoff jitter (default Math.random)
 * @property {() => string} [newId]   fresh UUIDs for event, update and entity ids
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default the browser's; tests
 *   pass a scripted one)
 */

/** @type {Readonly<Permissions>} */
export const PRIMARY = Object.freeze({canEditScenes: true, canManagePlayers: true,
  canControlInitiative: true, canTransferHost: true});
/** @type {Readonly<Permissions>} */
export const CO_HOST = Object.freeze({canEditScenes: true, canManagePlayers: false,
  canControlInitiative: true, canTransferHost: false});
/** @type {Readonly<Permissions>} */
export const NO_PERMISSIONS = Object.freeze({canEditScenes: false, canManagePlayers: false,
  canControlInitiative: false, canTransferHost: false});

/** Close codes after which a client must not reconnect by itself (protocol v1, section 13). */
export const TERMINAL_CLOSE_CODES = Object.freeze({
  1000: "left", 4000: "superseded", 4001: "kicked", 4400: "bad-request",
  4401: "invalid-token", 4404: "room-not-found", 4409: "room-exists", 4429: "room-full",
});
/** @type {Set<string>} */
const TERMINAL_CODES = new Set(Object.values(TERMINAL_CLOSE_CODES));
const ABNORMAL_CLOSURE = 1006;
/** WebSocket.OPEN. */
const OPEN = 1;
const SESSION_FRAMES = new Set(["session/created", "session/joined", "session/reconnected"]);
/** Error codes for an event that was not applied and should be sent again later. */
const RETRY_LATER = new Set(["overloaded", "unavailable"]);
/** Entity kind → state key holding it. */
export const TABLES = Object.freeze({token: "tokens", scene: "scenes", character: "characters"});
/** Where the seat is kept in the storage (sessionStorage by default). */
export const SEAT_KEY = "nexus-actors.seat";

/** @type {Options} */
export const DEFAULT_OPTIONS = Object.freeze({
  backoff: Object.freeze({baseMs: 1000, capMs: 30000, maxAttempts: 5}),
  outboxLimit: 256,
  updateTimeoutMs: 5000,
  maxHeld: 1000,
  gapTimeoutMs: 10000,
  idleTimeoutMs: 40000,
  connectTimeoutMs: 10000,
  closeTimeoutMs: 2000,
  heartbeatIntervalMs: 15000,
  cursorHz: 20,
  sendRate: 50,
  sendBurst: 100,
  chatHistory: 100,
});

// Errors ------------------------------------------------------------------------------

/** Every error of this client has a stable `code`. */
export class ClientError extends Error {
  /** @param {string} message @param {string} code */
  constructor(message, code) {
    super(message);
    this.name = new.target.name;
    /** @type {string} */
    this.code = code;
  }
}

/** The server refused the connect request (`code`: the server's, e.g. `room-not-found`). */
export class Refused extends ClientError {
  /**
   * @param {string} message @param {string} code
   * @param {number | null} [closeCode] @param {number | null} [retryAfterMs]
   */
  constructor(message, code, closeCode = null, retryAfterMs = null) {
    super(message, code);
    /** @type {number | null} */
    this.closeCode = closeCode;
    /** @type {number | null} */
    this.retryAfterMs = retryAfterMs;
  }
}

/** No connection could be made, or the seat was not granted. */
export class ConnectFailed extends ClientError {
  /** @param {string} message */
  constructor(message) { super(message, "connect-failed"); }
}

/** A send while `outboxLimit` events wait for answers; nothing was queued. */
export class OutboxFull extends ClientError {
  /** @param {number} limit */
  constructor(limit) {
    super(`${limit} events are waiting for the server's answer`, "outbox-full");
    this.limit = limit;
  }
}

/** A send after the session ended. */
export class SessionClosed extends ClientError {
  constructor() { super("the session has ended", "session-closed"); }
}

/** An optimistic update names an entity this client does not have. */
export class UnknownEntity extends ClientError {
  /** @param {string} kind @param {string} entityId */
  constructor(kind, entityId) {
    super(`${kind} ${JSON.stringify(entityId)} does not exist`, "not-found");
    this.kind = kind;
    this.entityId = entityId;
  }
}

// Small helpers -----------------------------------------------------------------------

/** A random UUID (version 4); works outside secure contexts too. @returns {string} */
export function uuid4() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The grade of a round trip, as the server gives it. @param {number} latency @returns {Status} */
export function qualityOf(latency) {
  if (latency < 100) return "excellent";
  if (latency < 200) return "good";
  if (latency < 400) return "fair";
  return "poor";
}

/** The WebSocket URL of the server that served this page: `ws(s)://<host>/ws`. @returns {string} */
export function pageSocketUrl() {
  const scheme = globalThis.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${globalThis.location.host}/ws`;
}

/**
 * The seat kept in `storage` by an earlier session (room code and newest token), if any.
 * @param {Storage | null} [storage]
 * @returns {{roomCode: string, token: string, memberId: string | null, name: string | null} | null}
 */
export function savedSeat(storage = defaultStorage()) {
  if (!storage) return null;
  try {
    const seat = JSON.parse(storage.getItem(SEAT_KEY) ?? "null");
    if (seat && typeof seat.roomCode === "string" && typeof seat.token === "string") return seat;
  } catch { /* not ours, or unreadable: no seat */ }
  return null;
}

/** Forget the kept seat. @param {Storage | null} [storage] */
export function forgetSeat(storage = defaultStorage()) {
  try { storage?.removeItem(SEAT_KEY); } catch { /* storage unavailable */ }
}

/** @returns {Storage | null} */
function defaultStorage() {
  try { return globalThis.sessionStorage ?? null; } catch { return null; }
}

/** Structural equality of JSON values (object key order does not matter). @returns {boolean} */
function sameJson(/** @type {any} */ a, /** @type {any} */ b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((v, i) => sameJson(v, b[i]));
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((k) => Object.hasOwn(b, k) && sameJson(a[k], b[k]));
}

/** @param {unknown} ms @returns {number} */
function milliseconds(ms) {
  return typeof ms === "number" && Number.isFinite(ms) ? Math.max(0, ms) : 0;
}

const now = () => globalThis.performance.now();

// The room: state and the server's rules for applying events ---------------------------

/** The room as the server applied it through `sequence`: the table, seats and hosts. */
export class RoomState {
  /** @param {string} code */
  constructor(code) {
    this.code = code;
    /** serverSequence of the last applied event. */
    this.sequence = 0;
    /** @type {Record<string, any>} */
    this.scenes = {};
    /** @type {string | null} */
    this.activeSceneId = null;
    /** @type {Record<string, any>} */
    this.tokens = {};
    /** @type {Record<string, any>} */
    this.characters = {};
    /** @type {{order: any[], round: number, turn: number, version: number}} */
    this.initiative = {order: [], round: 0, turn: 0, version: 1};
    /** @type {any[]} */
    this.chat = [];
    /** Seats in the order members were added. @type {Map<string, {id: string, name: string}>} */
    this.seats = new Map();
    /** @type {string | null} */
    this.hostId = null;
    /** Co-hosts in promotion order. @type {string[]} */
    this.coHostIds = [];
    /** @type {Map<string, Permissions>} */
    this.coHostPermissions = new Map();
  }

  /** The room a session frame's `data` describes. @param {any} data @returns {RoomState} */
  static fromSession(data) {
    const state = new RoomState(data.roomCode);
    const table = structuredClone(data.state);
    state.sequence = data.sequence;
    state.scenes = table.scenes;
    state.activeSceneId = table.activeSceneId;
    state.tokens = table.tokens;
    state.characters = table.characters;
    state.initiative = table.initiative;
    state.chat = table.chat;
    for (const p of data.players) state.seats.set(p.id, {id: p.id, name: p.name});
    state.hostId = data.hostId;
    state.coHostIds = [...data.coHostIds];
    for (const id of data.coHostIds) state.coHostPermissions.set(id, CO_HOST);
    return state;
  }

  /** @param {string} memberId @returns {Role} */
  roleOf(memberId) {
    if (memberId === this.hostId) return "host";
    return this.coHostPermissions.has(memberId) ? "co-host" : "player";
  }

  /** @param {string} memberId @returns {Permissions} */
  permissionsOf(memberId) {
    if (memberId === this.hostId) return PRIMARY;
    return this.coHostPermissions.get(memberId) ?? NO_PERMISSIONS;
  }

  /** The table as the session frame's `state` has it (live objects: read only). */
  public() {
    return {scenes: this.scenes, activeSceneId: this.activeSceneId, tokens: this.tokens,
      characters: this.characters, initiative: this.initiative, chat: this.chat};
  }

  /** Everything a client can know of the room, for comparing two copies. */
  clientView() {
    return {sequence: this.sequence, state: this.public(),
      seats: [...this.seats.values()].map((s) => [s.id, s.name]),
      hostId: this.hostId, coHostIds: [...this.coHostIds]};
  }
}

/** @param {Record<string, any>} table @param {string} id */
function entityOf(table, id) {
  if (!Object.hasOwn(table, id)) throw new RangeError(`no entity ${JSON.stringify(id)}`);
  return table[id];
}

/** @param {any} entity @param {any} data */
function merge(entity, data) {
  Object.assign(entity, data.changes);
  entity.version = data.version;
}

/** @param {RoomState} s @param {string} memberId */
function removeSeat(s, memberId) {
  s.seats.delete(memberId);
  if (s.coHostPermissions.has(memberId)) {
    s.coHostPermissions.delete(memberId);
    s.coHostIds.splice(s.coHostIds.indexOf(memberId), 1);
  }
  if (s.hostId === memberId) s.hostId = null;
}

/** @param {RoomState} s @param {any} d */
function applyInitiative(s, d) {
  for (const key of ["order", "round", "turn", "version"]) {
    if (Object.hasOwn(d, key)) /** @type {any} */ (s.initiative)[key] = d[key];
  }
}

/**
 * How each journaled event changes the state: the rules of the server's
 * `nexus_actors.room.events._APPLIERS` (and its `session/join`). An event naming an
 * entity that does not exist throws: the copy can no longer be trusted.
 * @type {Readonly<Record<string, (s: RoomState, d: any, chatHistory: number) => void>>}
 */
export const APPLIERS = Object.freeze({
  "scene/create": (s, d) => { s.scenes[d.scene.id] = {...d.scene}; },
  "scene/update": (s, d) => merge(entityOf(s.scenes, d.sceneId), d),
  "scene/delete": (s, d) => {
    const sceneId = d.sceneId;
    entityOf(s.scenes, sceneId);
    delete s.scenes[sceneId];
    for (const [id, token] of Object.entries(s.tokens)) {
      if (token.sceneId === sceneId) delete s.tokens[id];
    }
    if (s.activeSceneId === sceneId) s.activeSceneId = null;
  },
  "scene/activate": (s, d) => { s.activeSceneId = d.sceneId; },
  "token/create": (s, d) => {
    s.tokens[d.token.id] = {...d.token, position: {...d.token.position}};
  },
  "token/move": (s, d) => {
    const token = entityOf(s.tokens, d.tokenId);
    token.position = {...d.position};
    token.version = d.version;
  },
  "token/update": (s, d) => merge(entityOf(s.tokens, d.tokenId), d),
  "token/delete": (s, d) => { entityOf(s.tokens, d.tokenId); delete s.tokens[d.tokenId]; },
  "character/create": (s, d) => { s.characters[d.character.id] = {...d.character}; },
  "character/update": (s, d) => merge(entityOf(s.characters, d.characterId), d),
  "character/delete": (s, d) => {
    entityOf(s.characters, d.characterId);
    delete s.characters[d.characterId];
  },
  "initiative/set": applyInitiative,
  "initiative/next": applyInitiative,
  "chat/message": (s, d, chatHistory) => {
    s.chat.push({...d.message});
    if (s.chat.length > chatHistory) s.chat.splice(0, s.chat.length - chatHistory);
  },
  "session/join": (s, d) => {
    const player = d.player;
    s.seats.set(player.id, {id: player.id, name: player.name});
    if (s.hostId === null) s.hostId = player.id;
  },
  "session/leave": (s, d) => removeSeat(s, d.uuid),
  "session/kicked": (s, d) => removeSeat(s, d.playerId),
  "session/host-migrated": (s, d) => {
    const newHost = d.newHostId;
    if (s.coHostPermissions.has(newHost)) {
      s.coHostPermissions.delete(newHost);
      s.coHostIds.splice(s.coHostIds.indexOf(newHost), 1);
    }
    s.hostId = newHost;
  },
  "session/co-host-added": (s, d) => {
    s.coHostIds.push(d.coHostId);
    s.coHostPermissions.set(d.coHostId, {...NO_PERMISSIONS, ...d.permissions});
  },
  "session/co-host-removed": (s, d) => {
    const at = s.coHostIds.indexOf(d.coHostId);
    if (at < 0 || !s.coHostPermissions.has(d.coHostId)) throw new RangeError("not a co-host");
    s.coHostIds.splice(at, 1);
    s.coHostPermissions.delete(d.coHostId);
  },
  "session/hibernated": () => {},
});

/**
 * Apply one journaled event (`data` without `name`). Events must be applied in
 * serverSequence order.
 * @param {RoomState} state
 * @param {{sequence: number, name: string, data: any}} event
 * @param {number} chatHistory
 */
export function applyEvent(state, event, chatHistory) {
  if (event.sequence !== state.sequence + 1) {
    throw new RangeError(`event ${event.sequence} applied after ${state.sequence}`);
  }
  const applier = APPLIERS[event.name];
  if (applier === undefined) throw new RangeError(`unknown event ${event.name}`);
  applier(state, event.data, chatHistory);
  state.sequence = event.sequence;
}

// The copy of the room kept from the server's frames -----------------------------------

/** One seat's view of one room: state, presence, cursors, events held behind a gap. */
class Replica {
  /**
   * @param {string} memberId @param {RoomState} state @param {number} epoch
   * @param {number} chatHistory @param {number} maxHeld
   */
  constructor(memberId, state, epoch, chatHistory, maxHeld) {
    this.memberId = memberId;
    this.state = state;
    this.epoch = epoch;
    this.chatHistory = chatHistory;
    this.maxHeld = maxHeld;
    /** @type {Map<string, boolean>} */
    this.connected = new Map();
    /** @type {Map<string, Cursor>} */
    this.cursors = new Map();
    /** More than maxHeld events waited behind a gap: resume to fill it. */
    this.overflowed = false;
    /** An event did not apply: start over from a baseline. */
    this.broken = false;
    /** @type {Map<number, any>} */
    this.held = new Map();
    /** @type {number | null} */
    this.gapSince = null;
    /** A resume's session frame, until its replay is applied and checked. @type {any} */
    this.session = null;
    this.replayThrough = 0;
    this.presenceAt = 0;
  }

  /** @param {string} memberId @param {any} session @param {number} chatHistory @param {number} maxHeld */
  static baseline(memberId, session, chatHistory, maxHeld) {
    const replica = new Replica(memberId, RoomState.fromSession(session), session.epoch,
      chatHistory, maxHeld);
    replica.presence(session);
    return replica;
  }

  get sequence() { return this.state.sequence; }

  /** @returns {Member[]} */
  members() {
    const state = this.state;
    return [...state.seats.values()].map((seat) => ({id: seat.id, name: seat.name,
      role: state.roleOf(seat.id), connected: this.connected.get(seat.id) ?? false}));
  }

  /**
   * A new connection's session frame and event-cursor: keep the copy and expect a replay,
   * or adopt the frame's state.
   * @param {any} session @param {any} cursor
   * @returns {[ResumeMode, number, Array<[string, any]>]}
   */
  welcome(session, cursor) {
    this.held.clear();
    this.gapSince = null;
    this.overflowed = false;
    this.cursors.clear();
    this.presence(session);
    this.epoch = session.epoch;
    if (cursor.mode === "resume" && !this.broken && cursor.sequence === this.state.sequence) {
      this.session = session;
      this.replayThrough = cursor.replayThrough;
      return ["resume", this.replayThrough - this.state.sequence, this.checkReplayed()];
    }
    this.adopt(session);
    return ["baseline", 0, [["resynced", {sequence: this.state.sequence, epoch: this.epoch}]]];
  }

  /** @param {any} session */
  adopt(session) {
    this.state = RoomState.fromSession(session);
    this.broken = false;
    this.session = null;
    this.replayThrough = 0;
  }

  /** @param {any} session */
  presence(session) {
    this.connected = new Map(session.players.map((/** @type {any} */ p) => [p.id, p.connected]));
    this.presenceAt = session.sequence;
  }

  /** Once a resume's replay is applied, the copy must equal the session frame's. */
  checkReplayed() {
    /** @type {Array<[string, any]>} */
    const out = [];
    const session = this.session;
    if (session === null || this.state.sequence < this.replayThrough) return out;
    this.session = null;
    if (sameJson(this.state.clientView(), RoomState.fromSession(session).clientView())) return out;
    this.adopt(session);
    out.push(["resynced", {sequence: this.state.sequence, epoch: this.epoch}]);
    return out;
  }

  /**
   * An `event` frame: a presence notice, or a journaled event applied in order.
   * @param {any} frame @param {number} at @returns {Array<[string, any]>}
   */
  event(frame, at) {
    const data = frame.data;
    const name = data.name;
    if (!Object.hasOwn(frame, "serverSequence")) return this.notice(name, data);
    /** @type {number} */
    const sequence = frame.serverSequence;
    if (name === "session/join" && sequence > this.presenceAt) {
      // Presence follows arrival order, even for a join held behind a gap.
      this.connected.set(data.player.id, true);
    }
    if (sequence <= this.state.sequence || this.held.has(sequence)) return [];
    if (this.held.size >= this.maxHeld) {
      this.overflowed = true;
      return [];
    }
    this.held.set(sequence, frame);
    /** @type {Array<[string, any]>} */
    const out = [];
    let applied = false;
    while (!this.broken && this.held.has(this.state.sequence + 1)) {
      const next = this.held.get(this.state.sequence + 1);
      this.held.delete(this.state.sequence + 1);
      out.push(...this.apply(next));
      applied = true;
    }
    if (this.held.size === 0) this.gapSince = null;
    else if (this.gapSince === null || applied) this.gapSince = at;
    out.push(...this.checkReplayed());
    return out;
  }

  /** @param {string} name @param {any} data @returns {Array<[string, any]>} */
  notice(name, data) {
    if (name !== "session/connected" && name !== "session/disconnected") return [];
    const memberId = data.uuid;
    const connected = name === "session/connected";
    this.connected.set(memberId, connected);
    if (!connected) this.cursors.delete(memberId);
    return [["presence", {memberId, connected}]];
  }

  /** @param {any} frame @returns {Array<[string, any]>} */
  apply(frame) {
    const {name, ...data} = frame.data;
    const event = {sequence: frame.serverSequence, name, data};
    try {
      applyEvent(this.state, event, this.chatHistory);
    } catch {
      this.broken = true;
      return [];
    }
    if (name === "session/leave" || name === "session/kicked") {
      const member = name === "session/leave" ? data.uuid : data.playerId;
      this.connected.delete(member);
      this.cursors.delete(member);
    }
    const actorId = frame.actorId ?? null;
    return [["event", {name, data, sequence: event.sequence, eventId: frame.eventId, actorId,
      timestamp: frame.timestamp ?? 0, mine: actorId === this.memberId,
      replayed: event.sequence <= this.replayThrough}]];
  }

  /** @param {any} data @returns {{cursors: Cursor[], removed: string[]}} */
  cursorsFrame(data) {
    const moved = data.cursors.map((/** @type {any} */ c) => ({userId: c.userId,
      userName: c.userName, sceneId: c.sceneId, x: c.position.x, y: c.position.y}));
    for (const cursor of moved) this.cursors.set(cursor.userId, cursor);
    const removed = [...data.removed];
    for (const gone of removed) this.cursors.delete(gone);
    return {cursors: moved, removed};
  }
}

// Optimistic updates: a layer of pending changes over the copy --------------------------

/**
 * @typedef {object} Pending
 * @property {string} updateId
 * @property {string} eventId
 * @property {string} name
 * @property {string} table       tokens, scenes or characters
 * @property {string} entityId
 * @property {Record<string, any>} changes  merged into the entity while pending
 * @property {number} version     the entity's version once the server applies it
 * @property {number} deadline    performance.now() after which it is rolled back
 */

class Updates {
  constructor() {
    /** @type {Map<string, Pending>} */
    this.pending = new Map();
    /** "table\0id" → the server's current entity from a rejection, until the copy has it. @type {Map<string, any>} */
    this.rebased = new Map();
  }

  /** @param {Pending} pending */
  add(pending) { this.pending.set(pending.updateId, pending); }

  /** @param {string} updateId @returns {Pending | null} */
  settle(updateId) {
    const pending = this.pending.get(updateId) ?? null;
    this.pending.delete(updateId);
    return pending;
  }

  /** @param {string} updateId @param {any} current @returns {Pending | null} */
  reject(updateId, current) {
    const pending = this.settle(updateId);
    if (pending !== null && current && typeof current === "object"
        && Number.isInteger(current.version)) {
      this.rebased.set(`${pending.table}\0${pending.entityId}`, current);
    }
    return pending;
  }

  /** @param {number} at @returns {Pending[]} */
  expire(at) {
    const late = [...this.pending.values()].filter((p) => p.deadline <= at);
    for (const pending of late) this.pending.delete(pending.updateId);
    return late;
  }

  /** @returns {number | null} */
  nextDeadline() {
    let next = null;
    for (const p of this.pending.values()) if (next === null || p.deadline < next) next = p.deadline;
    return next;
  }

  forgetRebased() { this.rebased.clear(); }

  /** Drop rebased values the copy has caught up with (or whose entity is gone). @param {RoomState} state */
  prune(state) {
    for (const [key, current] of this.rebased) {
      const [table, id] = key.split("\0");
      const entity = /** @type {any} */ (state)[table][id];
      if (entity === undefined || entity.version >= current.version) this.rebased.delete(key);
    }
  }

  /** One entity as the application should see it. @param {RoomState} state @param {string} table @param {string} id */
  entity(state, table, id) {
    /** @type {any} */
    let entity = /** @type {any} */ (state)[table][id];
    if (entity === undefined) return null;
    const rebased = this.rebased.get(`${table}\0${id}`);
    if (rebased !== undefined && rebased.version > entity.version) entity = rebased;
    for (const p of this.pending.values()) {
      if (p.table === table && p.entityId === id) entity = {...entity, ...p.changes, version: p.version};
    }
    return entity;
  }

  /** The public state with pending updates shown. @param {RoomState} state */
  view(state) {
    /** @type {any} */
    const shown = state.public();
    const touched = new Set([...this.pending.values()].map((p) => `${p.table}\0${p.entityId}`));
    for (const key of this.rebased.keys()) touched.add(key);
    if (touched.size === 0) return shown;
    const copy = {...shown};
    for (const key of touched) {
      const [table, id] = key.split("\0");
      if (!Object.hasOwn(copy[table], id)) continue;
      if (copy[table] === shown[table]) copy[table] = {...shown[table]};
      copy[table][id] = this.entity(state, table, id);
    }
    return copy;
  }
}

// The outbox, pacing, backoff, heartbeats ----------------------------------------------

/**
 * @typedef {object} Entry
 * @property {string} eventId
 * @property {number} clientSequence
 * @property {string} name
 * @property {string | null} updateId
 * @property {string} frame  the client `event` frame, the same text every time it is sent
 */

class Outbox {
  /** @param {number} limit @param {() => string} newId */
  constructor(limit, newId) {
    this.limit = limit;
    this.newId = newId;
    /** @type {Map<string, Entry>} */
    this.entries = new Map();
    this.sequence = 0;
  }

  /** @param {string} name @param {Record<string, any>} data @param {string | null} [updateId] */
  add(name, data, updateId = null) {
    if (this.entries.size >= this.limit) throw new OutboxFull(this.limit);
    this.sequence += 1;
    const eventId = this.newId();
    const frame = JSON.stringify({type: "event", data: {name, ...data}, eventId,
      clientSequence: this.sequence});
    /** @type {Entry} */
    const entry = {eventId, clientSequence: this.sequence, name, updateId, frame};
    this.entries.set(eventId, entry);
    return entry;
  }

  /** @param {string} eventId @returns {Entry | null} */
  settle(eventId) {
    const entry = this.entries.get(eventId) ?? null;
    this.entries.delete(eventId);
    return entry;
  }

  /** @param {string} eventId */
  get(eventId) { return this.entries.get(eventId) ?? null; }

  get size() { return this.entries.size; }

  frames() { return [...this.entries.values()].map((e) => e.frame); }
}

/** A token bucket pacing what is sent below the server's rate limit. */
class Bucket {
  /** @param {number} rate per second @param {number} burst */
  constructor(rate, burst) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.updated = now();
  }

  /** @param {number} at */
  take(at) {
    this.tokens = Math.min(this.burst, this.tokens + ((at - this.updated) / 1000) * this.rate);
    this.updated = at;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Milliseconds until one message may be sent. */
  wait() { return Math.max(0, ((1 - this.tokens) / this.rate) * 1000); }
}

/**
 * The wait before reconnection attempt `attempt` (1, 2, ...): full jitter up to
 * `min(capMs, baseMs * 2^(attempt-1))`, never less than the server's hint.
 * @param {BackoffOptions} backoff @param {number} attempt @param {() => number} random
 * @param {number} [hintMs]
 */
export function backoffDelay(backoff, attempt, random, hintMs = 0) {
  const ceiling = Math.min(backoff.capMs, backoff.baseMs * 2 ** Math.min(attempt - 1, 64));
  return Math.max(hintMs, random() * ceiling);
}

/** @type {ConnectionQuality} */
const DISCONNECTED = Object.freeze({latency: null, status: "disconnected"});

/**
 * @typedef {object} Verdict  what to do after a connection ended
 * @property {boolean} retry
 * @property {boolean} immediate  reconnect at once (the client itself asked to resume)
 * @property {number} hint        milliseconds the server asked to wait
 * @property {number} closeCode
 * @property {string} reason
 * @property {Refused | null} refusal
 */

// The session ---------------------------------------------------------------------------

/**
 * One seat in one room, kept across connections.
 *
 * Create it with {@link connect} (or `new Session(url, target)`, add listeners, then
 * `await session.start()`). Read the room from its properties; send with its methods
 * (they return at once with what was queued); listen for what happens:
 * `event`, `presence`, `cursors`, `resynced`, `ack`, `refused`, `applied`, `confirmed`,
 * `rolledBack`, `connectionQuality`, `tokenRotated`, `reconnecting`, `reconnected`,
 * `reconnectionFailed`, `ended`, `error`, `hostMigrated` and `change` (anything shown
 * may have changed: redraw).
 */
export class Session extends EventTarget {
  /** @param {string} url ws(s)://host:port, path /ws unless one is given @param {Target} target */
  constructor(url, target) {
    super();
    const given = target.options ?? {};
    /** @type {Options} */
    this.options = {...DEFAULT_OPTIONS, ...given,
      backoff: {...DEFAULT_OPTIONS.backoff, ...(given.backoff ?? {})}};
    const parsed = new URL(url);
    if (parsed.pathname === "/" || parsed.pathname === "") parsed.pathname = "/ws";
    parsed.search = "";
    parsed.hash = "";
    /** The WebSocket URL without its query. */
    this.url = parsed.toString();
    const room = target.room ? String(target.room).trim().toUpperCase() : null;
    const role = target.role ?? "player";
    if (target.token) {
      if (!room) throw new TypeError("resuming a seat needs its room code");
    } else if (!target.name) {
      throw new TypeError("creating or joining a room needs a name");
    } else if (role === "player" && !room) {
      throw new TypeError("joining as a player needs a room code");
    }
    this.target = {room, name: target.name ?? null, role, token: target.token ?? null};
    /** @type {Storage | null} */
    this.storage = target.storage === undefined ? defaultStorage() : target.storage;
    this.random = target.random ?? Math.random;
    this.newId = target.newId ?? uuid4;
    this._WebSocket = target.WebSocket ?? globalThis.WebSocket;

    /** @type {string | null} */
    this.roomCode = target.token ? room : null;
    /** This seat's public id (`uuid` on the wire). @type {string | null} */
    this.memberId = null;
    /** The seat's secret resume token: always the newest the server gave. @type {string | null} */
    this.token = target.token ?? null;
    /** @type {ConnectionQuality} */
    this.quality = DISCONNECTED;
    /** The session is over (left, kicked, gave up). */
    this.ended = false;

    this._outbox = new Outbox(this.options.outboxLimit, this.newId);
    this._updates = new Updates();
    /** @type {Replica | null} */
    this._replica = null;
    this._seated = false;
    this._attempt = 0;
    /** @type {any} */
    this._welcome = null;
    /** @type {any} */
    this._announce = null;
    this._replayEnd = 0;
    this._hint = 0;
    /** @type {any} */
    this._refusal = null;
    /** @type {string | null} */
    this._resumeReason = null;
    /** @type {number | null} */
    this._resendAt = null;
    /** @type {string | null} */
    this._cursor = null;
    /** @type {string | null} */
    this._lastCursor = null;
    this._cursorSentAt = -Infinity;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._cursorTimer = null;
    /** @type {Map<number, number>} */
    this._probes = new Map();
    this._probeId = 0;
    /** @type {string[]} */
    this._frames = [];
    /** @type {string[]} */
    this._queue = [];
    this._bucket = new Bucket(this.options.sendRate, this.options.sendBurst);
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._drainTimer = null;
    /** @type {WebSocket | null} */
    this._ws = null;
    /** @type {((reason: string) => void) | null} */
    this._abort = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._timer = null;
    /** @type {ReturnType<typeof setInterval> | null} */
    this._heartbeat = null;
    this._closing = false;
    /** @type {(() => void) | null} */
    this._wake = null;
    this._changeQueued = false;
    /** @type {Array<() => void>} */
    this._changed = [];
    /** @type {Promise<void> | null} */
    this._started = null;
    /** @type {(value?: void) => void} */
    let resolveReady = () => {};
    /** @type {(reason: any) => void} */
    let rejectReady = () => {};
    this._ready = new Promise((resolve, reject) => { resolveReady = resolve; rejectReady = reject; });
    this._resolveReady = resolveReady;
    this._rejectReady = rejectReady;
    /** @type {(value?: void) => void} */
    let resolveDone = () => {};
    /** Resolves once the session has ended. */
    this.done = new Promise((resolve) => { resolveDone = resolve; });
    this._resolveDone = resolveDone;
  }

  // What the session knows --------------------------------------------------------

  /** The room exactly as the server applied it through `sequence` (read only). */
  get room() { return this._replica?.state ?? null; }

  get sequence() { return this._replica?.sequence ?? 0; }

  get epoch() { return this._replica?.epoch ?? 0; }

  /**
   * The table to draw: `{scenes, activeSceneId, tokens, characters, initiative, chat}`,
   * with pending optimistic updates shown (read only).
   */
  get state() {
    const replica = this._replica;
    return replica === null ? null : this._updates.view(replica.state);
  }

  /** Every seat, in the order seats were added. @returns {Member[]} */
  get members() { return this._replica?.members() ?? []; }

  /** @returns {string | null} */
  get hostId() { return this._replica?.state.hostId ?? null; }

  /** @returns {string[]} */
  get coHostIds() { return [...(this._replica?.state.coHostIds ?? [])]; }

  /** This seat's role. @returns {Role} */
  get role() {
    return this._replica && this.memberId ? this._replica.state.roleOf(this.memberId) : "player";
  }

  /** This seat's permissions, derived from its role. @returns {Permissions} */
  get permissions() {
    return this._replica && this.memberId
      ? this._replica.state.permissionsOf(this.memberId) : NO_PERMISSIONS;
  }

  /** Other members' cursors by member id. @returns {Record<string, Cursor>} */
  get cursors() { return Object.fromEntries(this._replica?.cursors ?? []); }

  /** Seated on a live connection now. */
  get connected() { return this._seated; }

  /** Durable events sent (or waiting to be sent) without an answer yet. */
  get unanswered() { return this._outbox.size; }

  // Starting and stopping ---------------------------------------------------------

  /**
   * Connect and wait until the seat is granted. Rejects with {@link Refused} when the
   * server refuses the request and {@link ConnectFailed} when no connection could be made.
   * @returns {Promise<Session>}
   */
  async start() {
    if (this._started === null) this._started = this._supervise();
    await this._ready;
    return this;
  }

  /** End the session from this side: a clean close; the seat stays (resume it later). */
  async close() {
    this._closing = true;
    this._wake?.();
    const ws = this._ws;
    if (ws !== null && !this.ended) {
      try { ws.close(1000); } catch { /* already closing */ }
      await Promise.race([this.done, sleep(this.options.closeTimeoutMs)]);
    }
    this._finish(null, null);
  }

  /** Give up the seat for good (its token stops working); resolves once the server has closed. */
  async leave() {
    this.sendEvent("session/leave", {});
    await this.done;
  }

  /** Wait until every durable event sent so far has been answered (or the session ended). */
  async flush() {
    while (this._outbox.size > 0 && !this.ended) {
      await new Promise((resolve) => this._changed.push(() => resolve(undefined)));
    }
  }

  /** Resolves once the session has ended. */
  waitEnded() { return this.done; }

  // Sending ---------------------------------------------------------------------

  /**
   * Any durable event of protocol v1: `name` and its fields.
   * @param {string} name @param {Record<string, any>} [data]
   * @returns {{eventId: string}}
   */
  sendEvent(name, data = {}) {
    this._checkOpen();
    const entry = this._outbox.add(name, {...data});
    if (this._seated) this._frames.push(entry.frame);
    this._pump();
    return {eventId: entry.eventId};
  }

  /**
   * Move a token optimistically: shown at once, confirmed or rolled back later. Based on
   * the version shown (a conflict rolls back) unless `force` (last write wins) or
   * `version` (the version the move is based on) is given.
   * @param {string} tokenId @param {number} x @param {number} y
   * @param {{force?: boolean, version?: number}} [how]
   * @returns {{eventId: string, updateId: string}}
   */
  moveToken(tokenId, x, y, how = {}) {
    const position = {x: Number(x), y: Number(y)};
    return this._update("token/move", "token", tokenId, {position}, {position}, how);
  }

  /**
   * @param {string} tokenId @param {Record<string, any>} changes
   * @param {{force?: boolean, version?: number}} [how]
   */
  updateToken(tokenId, changes, how = {}) {
    const shown = {...changes};
    if (shown.position) shown.position = {x: Number(shown.position.x), y: Number(shown.position.y)};
    return this._update("token/update", "token", tokenId, {changes}, shown, how);
  }

  /**
   * @param {string} sceneId @param {Record<string, any>} changes
   * @param {{force?: boolean, version?: number}} [how]
   */
  updateScene(sceneId, changes, how = {}) {
    return this._update("scene/update", "scene", sceneId, {changes}, {...changes}, how);
  }

  /**
   * @param {string} characterId @param {Record<string, any>} changes
   * @param {{force?: boolean, version?: number}} [how]
   */
  updateCharacter(characterId, changes, how = {}) {
    return this._update("character/update", "character", characterId, {changes},
      {...changes}, how);
  }

  /**
   * @param {string} name @param {{sceneId?: string} & Record<string, any>} [fields]
   * @returns {{eventId: string, entityId: string}}
   */
  createScene(name, fields = {}) {
    const {sceneId, ...rest} = fields;
    return this._create("scene/create", "scene", {...rest, name}, sceneId);
  }

  /**
   * @param {string} sceneId @param {number} x @param {number} y
   * @param {{tokenId?: string} & Record<string, any>} [fields]
   * @returns {{eventId: string, entityId: string}}
   */
  createToken(sceneId, x, y, fields = {}) {
    const {tokenId, ...rest} = fields;
    return this._create("token/create", "token", {...rest, sceneId, position: {x, y}}, tokenId);
  }

  /** @param {{characterId?: string} & Record<string, any>} [fields] */
  createCharacter(fields = {}) {
    const {characterId, ...rest} = fields;
    return this._create("character/create", "character", rest, characterId);
  }

  /** @param {string} sceneId @param {{version?: number}} [how] */
  deleteScene(sceneId, how = {}) { return this._delete("scene/delete", "sceneId", sceneId, how); }

  /** @param {string} tokenId @param {{version?: number}} [how] */
  deleteToken(tokenId, how = {}) { return this._delete("token/delete", "tokenId", tokenId, how); }

  /** @param {string} characterId @param {{version?: number}} [how] */
  deleteCharacter(characterId, how = {}) {
    return this._delete("character/delete", "characterId", characterId, how);
  }

  /** @param {string} sceneId */
  activateScene(sceneId) { return this.sendEvent("scene/activate", {sceneId}); }

  /** @param {any[]} order @param {number} [round] @param {number} [turn] */
  setInitiative(order, round = 0, turn = 0) {
    return this.sendEvent("initiative/set", {order, round, turn});
  }

  nextTurn() { return this.sendEvent("initiative/next", {}); }

  /** @param {string} text */
  chat(text) { return this.sendEvent("chat/message", {text}); }

  /** @param {string} memberId */
  transferHost(memberId) { return this.sendEvent("session/transfer-host", {newHostId: memberId}); }

  /** @param {string} memberId */
  addCoHost(memberId) { return this.sendEvent("session/add-co-host", {playerId: memberId}); }

  /** @param {string} memberId */
  removeCoHost(memberId) { return this.sendEvent("session/remove-co-host", {playerId: memberId}); }

  /** @param {string} memberId */
  kick(memberId) { return this.sendEvent("session/kick", {playerId: memberId}); }

  /**
   * Report this member's pointer (ephemeral: at most `cursorHz` a second are sent, the
   * latest position wins).
   * @param {string} sceneId @param {number} x @param {number} y
   */
  updateCursor(sceneId, x, y) {
    this._checkOpen();
    this._cursor = this._lastCursor = JSON.stringify({type: "event", data: {
      name: "cursor/update", sceneId, position: {x: Number(x), y: Number(y)}}});
    this._sendCursor();
  }

  _checkOpen() { if (this.ended) throw new SessionClosed(); }

  /**
   * @param {string} name @param {string} kind @param {string} entityId
   * @param {Record<string, any>} fields @param {Record<string, any>} changes
   * @param {{force?: boolean, version?: number}} how
   */
  _update(name, kind, entityId, fields, changes, how) {
    this._checkOpen();
    const replica = this._replica;
    const table = /** @type {Record<string, string>} */ (TABLES)[kind];
    const previous = replica === null ? null : this._updates.entity(replica.state, table, entityId);
    if (replica === null || previous === null) throw new UnknownEntity(kind, entityId);
    const updateId = this.newId();
    /** @type {Record<string, any>} */
    const data = {[`${kind}Id`]: entityId, ...fields, updateId};
    const base = how.version ?? previous.version;
    if (!how.force) data.version = base;
    const entry = this._outbox.add(name, data, updateId);
    this._updates.add({updateId, eventId: entry.eventId, name, table, entityId, changes,
      version: base + 1, deadline: now() + this.options.updateTimeoutMs});
    const shown = this._updates.entity(replica.state, table, entityId);
    this._emit("applied", {updateId, eventId: entry.eventId, name, entityId,
      value: structuredClone(shown), previous: structuredClone(previous)});
    if (this._seated) this._frames.push(entry.frame);
    this._changedState();
    this._pump();
    return {eventId: entry.eventId, updateId};
  }

  /** @param {string} name @param {string} key @param {Record<string, any>} entity @param {string | undefined} entityId */
  _create(name, key, entity, entityId) {
    const id = entityId ?? this.newId();
    const {eventId} = this.sendEvent(name, {[key]: {...entity, id}});
    return {eventId, entityId: id};
  }

  /** @param {string} name @param {string} key @param {string} entityId @param {{version?: number}} how */
  _delete(name, key, entityId, how) {
    /** @type {Record<string, any>} */
    const data = {[key]: entityId};
    if (how.version !== undefined) data.version = how.version;
    return this.sendEvent(name, data);
  }

  // Events to the application -----------------------------------------------------

  /** @param {string} type @param {any} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, {detail}));
  }

  /** Tell the application, once per turn of the event loop, that what it shows may have changed. */
  _changedState() {
    if (this._changeQueued) return;
    this._changeQueued = true;
    queueMicrotask(() => {
      this._changeQueued = false;
      this._emit("change", {});
      const waiting = this._changed;
      this._changed = [];
      for (const wake of waiting) wake();
    });
  }

  /** @param {Array<[string, any]>} events */
  _emitAll(events) {
    for (const [type, detail] of events) {
      this._emit(type, detail);
      if (type === "event" && detail.name === "session/host-migrated") {
        this._emit("hostMigrated", {newHostId: detail.data.newHostId,
          previousHostId: detail.data.previousHostId, manual: detail.data.manual,
          mine: detail.data.newHostId === this.memberId, replayed: detail.replayed});
      }
    }
    if (events.length) this._changedState();
  }

  /** @param {ConnectionQuality} quality */
  _setQuality(quality) {
    this.quality = quality;
    this._emit("connectionQuality", quality);
    this._changedState();
  }

  /** @param {string} token */
  _keepToken(token) {
    if (token !== this.token) {
      const rotated = this.token !== null;
      this.token = token;
      this._saveSeat();
      if (rotated) this._emit("tokenRotated", {token});
    } else {
      this._saveSeat();
    }
  }

  _saveSeat() {
    if (!this.storage || !this.roomCode || !this.token) return;
    try {
      this.storage.setItem(SEAT_KEY, JSON.stringify({roomCode: this.roomCode, token: this.token,
        memberId: this.memberId, name: this.target.name}));
    } catch { /* storage full or unavailable: the seat only lives as long as the page */ }
  }

  // Frames from the server --------------------------------------------------------

  /** @param {string} text */
  _receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      console.warn("nexus-client: ignored a frame that is not JSON", text.slice(0, 200));
      return;
    }
    const data = frame?.data;
    if (!data || typeof data !== "object") return;
    try {
      switch (frame.type) {
        case "event": this._onEvent(frame, data); break;
        case "event-cursor": this._onCursor(data); break;
        case "event-ack": this._onAck(data); break;
        case "update-confirmed": this._onConfirmed(data); break;
        case "update-rejected": this._onRejected(data); break;
        case "error": this._onError(data); break;
        case "cursors": this._onCursors(data); break;
        case "ping": this._onPing(data); break;
        case "heartbeat": this._onHeartbeat(data); break;
        case "backoff": this._hint = milliseconds(data.retryAfterMs); break;
        default: break;
      }
    } catch (error) {
      console.warn("nexus-client: ignored a frame that does not follow protocol v1", frame, error);
    }
  }

  /** @param {any} frame @param {any} data */
  _onEvent(frame, data) {
    const journaled = Object.hasOwn(frame, "serverSequence");
    if (!journaled && SESSION_FRAMES.has(data.name)) {
      this._welcome = data;
      this.roomCode = data.roomCode;
      this.memberId = data.uuid;
      this._keepToken(data.token);
      return;
    }
    if (!journaled && data.name === "session/token") {
      this._keepToken(data.token);  // rotated by the last reconnect, now durable
      return;
    }
    const replica = this._replica;
    if (replica === null || !this._seated) return;
    const events = replica.event(frame, now());
    if (events.length) this._updates.prune(replica.state);
    this._emitAll(events);
    this._afterReplica(replica);
  }

  /** @param {Replica} replica */
  _afterReplica(replica) {
    if (replica.broken) this._resumeReason = "inconsistent";
    else if (replica.overflowed) this._resumeReason = "gap";
    if (this._announce !== null && replica.sequence >= this._replayEnd) {
      const announce = this._announce;
      this._announce = null;
      this._emit("reconnected", announce);
    }
  }

  /** @param {any} data */
  _onCursor(data) {
    const session = this._welcome;
    this._welcome = null;
    if (session === null || this.memberId === null) return;
    const options = this.options;
    /** @type {ResumeMode} */
    let mode = "baseline";
    let replayed = 0;
    if (this._replica === null || this._replica.memberId !== this.memberId) {
      this._replica = Replica.baseline(this.memberId, session, options.chatHistory,
        options.maxHeld);
    } else {
      let events;
      [mode, replayed, events] = this._replica.welcome(session, data);
      if (mode === "baseline") this._updates.forgetRebased();
      this._emitAll(events);
    }
    this._seated = true;
    this._saveSeat();
    if (this._attempt > 0) {
      this._announce = {attempt: this._attempt, mode, replayed};
      this._replayEnd = mode === "resume" ? data.replayThrough : 0;
      this._afterReplica(this._replica);
    }
    this._frames.push(...this._outbox.frames());
    this._resendAt = null;
    this._frames.push(this._ping());
    if (this._cursor === null) this._cursor = this._lastCursor;
    this._changedState();
  }

  /** @param {any} data */
  _onAck(data) {
    if (this._outbox.settle(data.eventId) !== null) {
      this._emit("ack", {eventId: data.eventId, sequence: data.serverSequence,
        duplicate: Boolean(data.duplicate)});
      this._changedState();
    }
  }

  /** @param {any} data */
  _onConfirmed(data) {
    this._outbox.settle(data.eventId);
    if (this._updates.settle(data.updateId) !== null) {
      this._emit("confirmed", {updateId: data.updateId, eventId: data.eventId,
        sequence: data.serverSequence, version: data.version ?? null});
      this._changedState();
    }
  }

  /** @param {any} data */
  _onRejected(data) {
    this._outbox.settle(data.eventId);
    const current = data.current ?? null;
    const pending = this._updates.reject(data.updateId, current);
    if (pending !== null) {
      if (this._replica !== null) this._updates.prune(this._replica.state);
      this._rolledBack(pending, String(data.reason ?? data.code), data.currentVersion, current);
    }
  }

  /** @param {Pending} pending @param {string} reason @param {any} currentVersion @param {any} current */
  _rolledBack(pending, reason, currentVersion, current) {
    this._emit("rolledBack", {updateId: pending.updateId, eventId: pending.eventId,
      entityId: pending.entityId, name: pending.name, reason,
      currentVersion: Number.isInteger(currentVersion) ? currentVersion : null,
      current: current && typeof current === "object" ? current : null});
    this._changedState();
  }

  /** @param {any} data */
  _onError(data) {
    const code = String(data.code);
    const message = String(data.message ?? "");
    const {code: _c, message: _m, eventId: _e, ...detail} = data;
    if (!this._seated) {
      this._refusal = data;
      return;
    }
    const entry = typeof data.eventId === "string" ? this._outbox.get(data.eventId) : null;
    if (entry === null) {
      if (code === "rate-limited") this._resendLater(now() + milliseconds(data.retryAfterMs));
      if (code !== "superseded") this._emit("error", {code, message, detail});
      return;
    }
    if (RETRY_LATER.has(code)) {
      this._resendLater(now() + milliseconds(data.retryAfterMs));
      return;
    }
    this._outbox.settle(entry.eventId);
    const pending = entry.updateId !== null ? this._updates.settle(entry.updateId) : null;
    if (pending !== null) {
      this._rolledBack(pending, code, data.currentVersion, data.current);
    } else {
      this._emit("refused", {eventId: entry.eventId, name: entry.name, code, message, detail});
      this._changedState();
    }
  }

  /** @param {number} when */
  _resendLater(when) {
    this._resendAt = this._resendAt === null ? when : Math.max(this._resendAt, when);
  }

  /** @param {any} data */
  _onCursors(data) {
    if (this._replica !== null && this._seated) {
      this._emit("cursors", this._replica.cursorsFrame(data));
      this._changedState();
    }
  }

  /** @param {any} data */
  _onPing(data) {
    const latency = Number(data.latency);
    const status = ["excellent", "good", "fair", "poor"].includes(data.quality)
      ? data.quality : qualityOf(latency);
    this._setQuality({latency, status});
  }

  /** @param {any} data */
  _onHeartbeat(data) {
    if (data.kind !== "pong" || !Number.isInteger(data.id)) return;
    const sent = this._probes.get(data.id);
    if (sent === undefined) return;
    this._probes.delete(data.id);
    const latency = Math.round((now() - sent) * 10) / 10;
    this._setQuality({latency, status: qualityOf(latency)});
  }

  /** A heartbeat frame to send now. */
  _ping() {
    this._probeId += 1;
    this._probes.set(this._probeId, now());
    return JSON.stringify({type: "heartbeat", data: {kind: "ping", id: this._probeId}});
  }

  // Timers ------------------------------------------------------------------------

  /** @returns {number | null} */
  _nextDeadline() {
    const deadlines = [this._updates.nextDeadline(), this._resendAt];
    const replica = this._replica;
    if (replica !== null && this._seated && this._resumeReason === null
        && replica.gapSince !== null) {
      deadlines.push(replica.gapSince + this.options.gapTimeoutMs);
    }
    let next = null;
    for (const d of deadlines) if (d !== null && (next === null || d < next)) next = d;
    return next;
  }

  _tick() {
    const at = now();
    for (const pending of this._updates.expire(at)) this._rolledBack(pending, "timeout", null, null);
    const replica = this._replica;
    if (this._seated && replica !== null && replica.gapSince !== null
        && at >= replica.gapSince + this.options.gapTimeoutMs) {
      this._resumeReason = "gap";
    }
    if (this._resendAt !== null && at >= this._resendAt) {
      this._resendAt = null;
      if (this._seated) this._frames.push(...this._outbox.frames());
    }
  }

  _schedule() {
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
    if (this.ended) return;
    const deadline = this._nextDeadline();
    if (deadline === null) return;
    this._timer = setTimeout(() => {
      this._timer = null;
      this._tick();
      this._pump();
    }, Math.max(0, deadline - now()));
  }

  // Between the rules and the socket ----------------------------------------------

  /** Hand what was produced to the connection, and rearm the timers. */
  _pump() {
    const frames = this._frames;
    this._frames = [];
    if (this._ws !== null && this._ws.readyState === OPEN) this._queue.push(...frames);
    this._drain();
    this._sendCursor();
    if (this._resumeReason !== null && this._abort !== null) this._abort(this._resumeReason);
    this._schedule();
  }

  /** Send queued frames as fast as the pacing allows. */
  _drain() {
    const ws = this._ws;
    if (ws === null || ws.readyState !== OPEN) {
      this._queue = [];
      return;
    }
    while (this._queue.length && this._bucket.take(now())) ws.send(/** @type {string} */ (this._queue.shift()));
    if (this._queue.length && this._drainTimer === null) {
      this._drainTimer = setTimeout(() => { this._drainTimer = null; this._drain(); },
        this._bucket.wait());
    }
  }

  _sendCursor() {
    if (this._cursor === null || !this._seated || this._cursorTimer !== null) return;
    const ws = this._ws;
    if (ws === null || ws.readyState !== OPEN) return;
    const interval = 1000 / this.options.cursorHz;
    const wait = this._cursorSentAt + interval - now();
    if (wait > 0 || this._queue.length) {
      this._cursorTimer = setTimeout(() => { this._cursorTimer = null; this._sendCursor(); },
        Math.max(wait, this._queue.length ? this._bucket.wait() : 0));
      return;
    }
    if (!this._bucket.take(now())) {
      this._cursorTimer = setTimeout(() => { this._cursorTimer = null; this._sendCursor(); },
        this._bucket.wait());
      return;
    }
    ws.send(this._cursor);
    this._cursor = null;
    this._cursorSentAt = now();
  }

  // Connections -------------------------------------------------------------------

  /** The query string of the next connection. */
  _query() {
    /** @type {Record<string, string>} */
    let params;
    if (this.token !== null && this.roomCode !== null) {
      params = {reconnect: this.roomCode, token: this.token};
      const replica = this._replica;
      if (replica !== null && !replica.broken) {
        params.lastSeenSequence = String(replica.sequence);
        params.epoch = String(replica.epoch);
      }
    } else if (this.target.role === "host") {
      params = {host: this.target.room ?? "", name: /** @type {string} */ (this.target.name)};
    } else {
      params = {join: /** @type {string} */ (this.target.room),
        name: /** @type {string} */ (this.target.name)};
    }
    return new URLSearchParams(params).toString();
  }

  /** @param {number} attempt */
  _opened(attempt) {
    this._attempt = attempt;
    this._seated = false;
    this._welcome = null;
    this._announce = null;
    this._hint = 0;
    this._refusal = null;
    this._frames = [];
    this._queue = [];
    this._resumeReason = null;
  }

  /**
   * The connection ended: whether and how to come back.
   * @param {number | null} closeCode null: no close frame @param {string} reason
   * @returns {Verdict}
   */
  _closed(closeCode, reason) {
    const wasSeated = this._seated;
    this._seated = false;
    this._welcome = null;
    this._probes.clear();
    if (this.quality.status !== "disconnected") this._setQuality(DISCONNECTED);
    const code = closeCode ?? ABNORMAL_CLOSURE;
    if (this._resumeReason !== null) {
      const why = this._resumeReason;
      this._resumeReason = null;
      return {retry: true, immediate: true, hint: 0, closeCode: code, reason: why, refusal: null};
    }
    /** @type {Refused | null} */
    let refusal = null;
    if (this._refusal !== null && !wasSeated) {
      const data = this._refusal;
      const hint = this._hint || milliseconds(data.retryAfterMs);
      refusal = new Refused(String(data.message ?? "connect refused"), String(data.code), code,
        hint || null);
    }
    const retry = !Object.hasOwn(TERMINAL_CLOSE_CODES, code)
      && (refusal === null || !TERMINAL_CODES.has(refusal.code));
    const why = closeCode !== null ? String(closeCode) : reason;
    let hint = this._hint;
    if (refusal !== null && refusal.retryAfterMs !== null) hint = Math.max(hint, refusal.retryAfterMs);
    return {retry, immediate: false, hint, closeCode: code, reason: why, refusal};
  }

  /**
   * Open one connection and serve it until it ends.
   * @param {number} attempt
   * @returns {Promise<{verdict: Verdict, seated: boolean, opened: boolean}>}
   */
  _connection(attempt) {
    return new Promise((resolve) => {
      const options = this.options;
      let ws;
      try {
        ws = new this._WebSocket(`${this.url}?${this._query()}`);
      } catch {
        resolve({verdict: {retry: true, immediate: false, hint: 0, closeCode: ABNORMAL_CLOSURE,
          reason: "unreachable", refusal: null}, seated: false, opened: false});
        return;
      }
      let opened = false;
      let seated = false;
      let finished = false;
      /** @type {ReturnType<typeof setTimeout> | null} */
      let idle = null;
      const connectTimer = setTimeout(() => abort("timeout"), options.connectTimeoutMs);
      const touch = () => {
        if (idle !== null) clearTimeout(idle);
        idle = setTimeout(() => abort("idle"), options.idleTimeoutMs);
      };
      /** @param {number | null} closeCode @param {string} reason */
      const end = (closeCode, reason) => {
        if (finished) return;
        finished = true;
        clearTimeout(connectTimer);
        if (idle !== null) clearTimeout(idle);
        this._stopHeartbeat();
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        if (this._ws === ws) this._ws = null;
        this._abort = null;
        this._queue = [];
        if (!opened) {
          resolve({verdict: {retry: true, immediate: false, hint: 0, closeCode: ABNORMAL_CLOSURE,
            reason: "unreachable", refusal: null}, seated: false, opened: false});
          return;
        }
        const verdict = this._closed(closeCode, reason);
        this._pump();
        resolve({verdict, seated, opened});
      };
      /** @param {string} reason */
      const abort = (reason) => {
        if (reason === "timeout" && seated) return;
        try { ws.close(); } catch { /* closing already */ }
        end(null, reason);
      };
      this._ws = ws;
      this._abort = abort;
      ws.onopen = () => {
        opened = true;
        this._opened(attempt);
        touch();
        this._pump();
      };
      ws.onmessage = (message) => {
        touch();
        if (typeof message.data !== "string") return;
        this._receive(message.data);
        if (this._seated && !seated) {
          seated = true;
          clearTimeout(connectTimer);
          this._startHeartbeat();
          this._resolveReady();
        }
        this._pump();
      };
      ws.onclose = (event) => {
        const code = event.code === ABNORMAL_CLOSURE ? null : event.code;
        end(code, "dropped");
      };
    });
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    const interval = this.options.heartbeatIntervalMs;
    if (interval > 0) {
      this._heartbeat = setInterval(() => {
        if (this._seated) {
          this._frames.push(this._ping());
          this._pump();
        }
      }, interval);
    }
  }

  _stopHeartbeat() {
    if (this._heartbeat !== null) clearInterval(this._heartbeat);
    this._heartbeat = null;
  }

  /** Wait `ms`, or less if the session is closed meanwhile. @param {number} ms */
  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this._wake = null; resolve(undefined); }, ms);
      this._wake = () => { clearTimeout(timer); this._wake = null; resolve(undefined); };
    });
  }

  async _supervise() {
    const backoff = this.options.backoff;
    let attempt = 0;
    let first = true;  // not seated yet: failures go to the caller of start()
    let delay = 0;
    while (true) {
      if (delay > 0) await this._sleep(delay);
      if (this._closing) {
        this._finish(null, null);
        return;
      }
      const {verdict, seated, opened} = await this._connection(attempt);
      if (this._closing) {
        this._finish(null, null);
        return;
      }
      if (seated) {
        attempt = 0;
        first = false;
      } else if (first && opened && verdict.refusal === null && this.token === null) {
        // The server may have granted the create or join without our hearing of it:
        // asking again could take a second seat.
        this._giveUp(verdict, false, true, attempt, false);
        return;
      }
      if (!verdict.retry) {
        this._giveUp(verdict, seated, first, attempt, false);
        return;
      }
      attempt += 1;
      if (attempt > backoff.maxAttempts) {
        this._giveUp(verdict, false, first, attempt - 1, true);
        return;
      }
      delay = verdict.immediate && attempt === 1
        ? 0 : backoffDelay(backoff, attempt, this.random, verdict.hint);
      if (!first) {
        this._emit("reconnecting", {attempt, nextAttemptInMs: delay, reason: verdict.reason});
        this._changedState();
      }
    }
  }

  /**
   * @param {Verdict} verdict @param {boolean} seated @param {boolean} first
   * @param {number} attempts @param {boolean} exhausted
   */
  _giveUp(verdict, seated, first, attempts, exhausted) {
    const closed = /** @type {Record<number, string>} */ (TERMINAL_CLOSE_CODES)[verdict.closeCode]
      ?? String(verdict.closeCode);
    if (first) {
      const failure = verdict.refusal ?? new ConnectFailed(`could not connect (${verdict.reason})`);
      if (failure instanceof Refused && TERMINAL_CODES.has(failure.code)) this._forgetSeat();
      this._finish(null, failure);
    } else if (seated) {
      if (["left", "kicked"].includes(closed)) this._forgetSeat();
      this._finish(["ended", {closeCode: verdict.closeCode, reason: closed}], null);
    } else if (exhausted) {
      this._finish(["reconnectionFailed", {attempts, code: "attempts-exhausted",
        message: `no connection after ${attempts} attempts (last: ${verdict.reason})`}], null);
    } else {
      const refusal = verdict.refusal;
      if (refusal !== null && TERMINAL_CODES.has(refusal.code)) this._forgetSeat();
      this._finish(["reconnectionFailed", {attempts,
        code: refusal !== null ? refusal.code : closed,
        message: refusal !== null ? refusal.message : `closed: ${closed}`}], null);
    }
  }

  _forgetSeat() {
    const seat = savedSeat(this.storage);
    if (seat !== null && seat.token === this.token) forgetSeat(this.storage);
  }

  /**
   * The session is over: tell the application.
   * @param {[string, any] | null} event @param {ClientError | null} failure
   */
  _finish(event, failure) {
    if (this.ended) return;
    this.ended = true;
    this._stopHeartbeat();
    for (const timer of [this._timer, this._drainTimer, this._cursorTimer]) {
      if (timer !== null) clearTimeout(timer);
    }
    this._timer = this._drainTimer = this._cursorTimer = null;
    if (event !== null) this._emit(event[0], event[1]);
    if (failure !== null) this._rejectReady(failure);
    else this._resolveReady();
    this._resolveDone();
    this._changedState();
  }
}

/**
 * Connect to a room and wait until the seat is granted.
 *
 *   create:  connect(url, {role: "host", name: "GM"})
 *   join:    connect(url, {room: "K7PX", name: "Ana"})
 *   resume:  connect(url, {room: "K7PX", token})   (savedSeat() gives both after a reload)
 *
 * @param {string} url ws(s)://host:port (see pageSocketUrl())
 * @param {Target} target
 * @returns {Promise<Session>}
 */
export async function connect(url, target) {
  return new Session(url, target).start();
}

/** @param {number} ms */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
