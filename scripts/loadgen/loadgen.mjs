// Load generator for scripts/bench.py: R rooms x P WebSocket clients against a running server.
//
// It does what bench.py's Python clients do (run_room, BenchClient, Stats, bench()),
// on Node's event loop so that the generator is not the bottleneck:
//
//   per room: the host connects with /ws?host&name=gm and reads session/created; P-1
//   players join with /ws?join=CODE&name=pN; the host creates scene s{room} and waits
//   for its event-ack; each client creates token t{room}-{index} and waits for its ack.
//   Once every room is ready, every client sends cursor/update at --cursor-hz (position.x
//   is the send time in performance.now() ms) and token/move at --moves per second,
//   the rooms' ticks spread evenly over one tick interval. After --warmup seconds the
//   window of --seconds is measured; acks and deliveries of moves sent in the window
//   are still counted for up to 5 s after it.
//
// Usage: node loadgen.mjs --port 8000 [--rooms 50 --players 10 --cursor-hz 20 --moves 1
//                                      --seconds 20 --warmup 3 --host 127.0.0.1
//                                      --named-rooms SEED]
//
// --named-rooms: hosts create their rooms with a code of their own (host=CODE, CODE drawn
// from SEED and the room's number) instead of letting the server name them, so a load
// balancer hashing on the room code sends the host and the players to the same process.
//
// stdout: one JSON object (raw counts, latency percentiles, own CPU time over the window).
// stderr: "loadgen: window start" and "loadgen: window end" lines at the window's edges
// (bench.py samples the server's CPU time there), and diagnostics.

import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { parseArgs } from "node:util";

import WebSocket from "ws";

const SETTLE_MS = 5000;
const SETUP_TIMEOUT_MS = 60000;

function options() {
  const { values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string" },
      rooms: { type: "string", default: "50" },
      players: { type: "string", default: "10" },
      "cursor-hz": { type: "string", default: "20" },
      moves: { type: "string", default: "1" },
      seconds: { type: "string", default: "20" },
      warmup: { type: "string", default: "3" },
      "named-rooms": { type: "string" },
    },
    strict: true,
  });
  if (values.port === undefined) {
    throw new Error("--port is required");
  }
  const number = (name) => {
    const value = Number(values[name]);
    if (!Number.isFinite(value) || value < 0) {
      throw new Error(`--${name} must be a non-negative number, not ${values[name]}`);
    }
    return value;
  };
  const opts = {
    host: values.host,
    port: number("port"),
    rooms: number("rooms"),
    players: number("players"),
    cursorHz: number("cursor-hz"),
    moves: number("moves"),
    seconds: number("seconds"),
    warmup: number("warmup"),
    namedRooms: values["named-rooms"] === undefined ? null : number("named-rooms"),
  };
  if (opts.players < 1 || opts.cursorHz <= 0) {
    throw new Error("--players must be at least 1 and --cursor-hz positive");
  }
  return opts;
}

const CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/** Room ``index``'s code for --named-rooms ``seed``: four letters of the server's alphabet. */
function roomCode(seed, index) {
  let n = (seed * 7919 + index * 104729) % CODE_ALPHABET.length ** 4;
  let code = "";
  for (let i = 0; i < 4; i++) {
    code += CODE_ALPHABET[n % CODE_ALPHABET.length];
    n = Math.floor(n / CODE_ALPHABET.length);
  }
  return code;
}

/** A growable array of doubles (latencies run into the millions of entries). */
class Samples {
  constructor() {
    this.values = new Float64Array(1 << 16);
    this.length = 0;
  }

  push(value) {
    if (this.length === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2);
      bigger.set(this.values);
      this.values = bigger;
    }
    this.values[this.length++] = value;
  }

  /** count, mean, p50, p99, max: the same nearest-rank rule as bench.py's percentile(). */
  summary() {
    const n = this.length;
    if (n === 0) {
      return { count: 0, mean: null, p50: null, p99: null, max: null };
    }
    const sorted = this.values.slice(0, n).sort();
    let sum = 0;
    for (let i = 0; i < n; i++) {
      sum += sorted[i];
    }
    const at = (q) => sorted[Math.min(n - 1, Math.max(0, roundHalfEven((q / 100) * (n - 1))))];
    return { count: n, mean: round3(sum / n), p50: round3(at(50)), p99: round3(at(99)),
             max: round3(sorted[n - 1]) };
  }
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

function round3(x) {
  return Math.round(x * 1000) / 1000;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The shared counters and samples (bench.py's Stats). */
class Stats {
  constructor(others) {
    this.others = others;
    this.cursorLatency = new Samples();
    this.ackLatency = new Samples();
    this.ackInbound = new Samples(); // wall ms from sending a move to the server applying it
    this.ackOutbound = new Samples(); // wall ms from the server applying a move to its ack
    this.frames = 0;
    this.cursorEntries = 0;
    this.movesSent = 0;
    this.movesReceived = 0;
    this.acks = 0;
    this.closes = 0; // close frames received from the server
    this.drops = 0; // connections lost without a close frame
    this.socketErrors = 0;
    this.errors = 0; // {"type":"error"} frames
    this.measuring = false;
    this.measuredMoves = new Set(); // eventIds of moves sent in the window
    this.settling = false;
    this.onSettled = null;
  }

  /** After the window: resolve once every measured move is acked and delivered. */
  check() {
    if (this.settling && this.onSettled !== null && this.acks >= this.movesSent
        && this.movesReceived >= this.movesSent * this.others) {
      const settled = this.onSettled;
      this.onSettled = null;
      settled();
    }
  }
}

const ACK = '{"type":"event-ack"';
const ERROR = '{"type":"error"';
const CURSORS = '{"type":"cursors"';
const MOVE = '"token/move"';

/** One WebSocket client (bench.py's BenchClient). */
class Client {
  constructor(url, stats) {
    this.stats = stats;
    this.uuid = null;
    this.pending = new Map(); // eventId -> performance.now() at send
    this.seq = 0;
    this.live = false; // false during set-up: frames go to `waiter` only
    this.waiter = null;
    this.backlog = [];
    this.failure = null; // why the connection failed, for a waiter that comes later
    this.stopping = false;
    this.ws = new WebSocket(url, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      // An all-zero masking key, like bench.py's frames: ws then skips masking the payload.
      generateMask: (mask) => mask.fill(0),
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
    this.ws.on("error", (error) => {
      if (!this.stopping) {
        stats.socketErrors += 1;
        this.fail(error);
      }
    });
    this.ws.on("close", (code) => {
      if (this.stopping) return;
      if (code === 1006) stats.drops += 1;
      else stats.closes += 1;
      this.fail(new Error(`closed (${code})`));
    });
    this.ws.on("message", (data, isBinary) => this.receive(data, isBinary));
  }

  static async open(opts, target, stats) {
    const client = new Client(`ws://${opts.host}:${opts.port}${target}`, stats);
    await client.opened;
    return client;
  }

  fail(error) {
    this.failure ??= error;
    const waiter = this.waiter;
    if (waiter !== null) {
      this.waiter = null;
      waiter.reject(error);
    }
  }

  /** Resolve with the first text frame that `match` accepts, dropping others (set-up only). */
  next(match) {
    return new Promise((resolve, reject) => {
      if (this.failure !== null) {
        reject(this.failure);
        return;
      }
      this.waiter = { match, resolve, reject };
      while (this.waiter !== null && this.backlog.length > 0) this.offer(this.backlog.shift());
    });
  }

  offer(text) {
    const waiter = this.waiter;
    if (waiter === null) {
      // A frame can arrive in the same chunk as the handshake, before anyone waits.
      this.backlog.push(text);
    } else if (text.startsWith(ERROR)) {
      this.waiter = null;
      waiter.reject(new Error(text));
    } else if (waiter.match(text)) {
      this.waiter = null;
      waiter.resolve(text);
    }
  }

  firstFrame() {
    return this.next(() => true).then((text) => JSON.parse(text));
  }

  waitFor(marker) {
    return this.next((text) => text.includes(marker));
  }

  send(message) {
    this.ws.send(typeof message === "string" ? message : JSON.stringify(message));
  }

  receive(data, isBinary) {
    if (isBinary) return;
    const now = performance.now();
    const text = data.toString();
    if (!this.live) {
      this.offer(text);
      return;
    }
    const stats = this.stats;
    if (text.startsWith(ACK)) {
      const message = JSON.parse(text);
      const eventId = message.data.eventId;
      const sent = this.pending.get(eventId);
      if (sent !== undefined) {
        this.pending.delete(eventId);
        stats.acks += 1;
        stats.ackLatency.push(now - sent);
        const wall = Date.now();
        const applied = message.timestamp;
        stats.ackInbound.push(applied - (wall - (now - sent)));
        stats.ackOutbound.push(wall - applied);
        stats.check();
      }
    } else if (text.startsWith(ERROR)) {
      stats.errors += 1;
    } else if (text.includes(MOVE)) {
      const message = JSON.parse(text);
      if (stats.measuredMoves.has(message.eventId) && message.actorId !== this.uuid) {
        stats.movesReceived += 1;
        stats.check();
      }
    }
    if (!stats.measuring) return;
    stats.frames += 1;
    if (text.startsWith(CURSORS)) {
      const cursors = JSON.parse(text).data.cursors;
      for (let i = 0; i < cursors.length; i++) {
        stats.cursorEntries += 1;
        stats.cursorLatency.push(now - cursors[i].position.x);
      }
    }
  }

  /** Send frames in one write, as bench.py's single send_all does. */
  sendAll(frames) {
    const socket = this.ws._socket; // ws's net.Socket: cork so both frames leave together
    if (frames.length > 1 && socket) socket.cork();
    for (const frame of frames) this.ws.send(frame);
    if (frames.length > 1 && socket) socket.uncork();
  }

  stop() {
    this.stopping = true;
    this.ws.terminate();
  }
}

/** One room: set-up, then its send loop (bench.py's run_room). */
class Room {
  constructor(index, opts, stats) {
    this.index = index;
    this.opts = opts;
    this.stats = stats;
    this.clients = [];
    this.tick = 0;
    this.nextAt = 0;
    this.timer = null;
    this.done = false;
  }

  async setUp() {
    const { opts, stats, index: r } = this;
    const named = opts.namedRooms === null ? "" : `=${roomCode(opts.namedRooms, r)}`;
    const host = await Client.open(opts, `/ws?host${named}&name=gm`, stats);
    this.clients.push(host);
    const created = (await host.firstFrame()).data;
    host.uuid = created.uuid;
    const code = created.roomCode;
    for (let i = 1; i < opts.players; i++) {
      const client = await Client.open(opts, `/ws?join=${code}&name=p${i}`, stats);
      this.clients.push(client);
      client.uuid = (await client.firstFrame()).data.uuid;
    }
    const acked = host.waitFor('"event-ack"');
    host.send({ type: "event", data: { name: "scene/create", scene: { id: `s${r}`, name: "bench" } },
                eventId: `scene-${r}` });
    await acked;
    for (const [i, client] of this.clients.entries()) {
      const tokenAcked = client.waitFor('"event-ack"');
      client.send({ type: "event", data: { name: "token/create", token: {
        id: `t${r}-${i}`, sceneId: `s${r}`, position: { x: 0, y: 0 } } }, eventId: `tok-${r}-${i}` });
      await tokenAcked;
    }
    for (const client of this.clients) {
      client.live = true;
      client.backlog = [];
    }
  }

  start() {
    const interval = 1000 / this.opts.cursorHz;
    this.interval = interval;
    this.moveEvery = this.opts.moves
      ? Math.max(1, roundHalfEven(this.opts.cursorHz / this.opts.moves)) : 0;
    this.nextAt = performance.now() + (this.index * interval) / Math.max(1, this.opts.rooms);
    this.schedule();
  }

  schedule() {
    this.timer = setTimeout(() => this.send(), Math.max(0, this.nextAt - performance.now()));
  }

  send() {
    if (this.done) return;
    this.nextAt += this.interval;
    this.tick += 1;
    const { stats, index: r, tick, moveEvery } = this;
    const now = performance.now();
    for (let i = 0; i < this.clients.length; i++) {
      const client = this.clients[i];
      const cursor = `{"type":"event","data":{"name":"cursor/update","sceneId":"s${r}",`
        + `"position":{"x":${now},"y":${i}}}}`;
      // Each player moves once per moveEvery ticks, at its own phase: durable writes
      // arrive evenly over time, as they do from real players (not in lock-step bursts).
      if (moveEvery && (tick + r * this.clients.length + i) % moveEvery === 0) {
        client.seq += 1;
        const eventId = `m${r}-${i}-${client.seq}`;
        if (stats.measuring) {
          client.pending.set(eventId, now);
          stats.measuredMoves.add(eventId);
          stats.movesSent += 1;
        }
        client.sendAll([cursor, `{"type":"event","data":{"name":"token/move","tokenId":"t${r}-${i}",`
          + `"position":{"x":${client.seq},"y":1}},"eventId":"${eventId}"}`]);
      } else {
        client.sendAll([cursor]);
      }
    }
    this.schedule();
  }

  stop() {
    this.done = true;
    clearTimeout(this.timer);
  }
}

async function main() {
  const opts = options();
  const stats = new Stats(opts.players - 1);
  const rooms = [];
  for (let r = 0; r < opts.rooms; r++) rooms.push(new Room(r, opts, stats));
  let setUpTimer;
  const timeout = new Promise((_, reject) => {
    setUpTimer = setTimeout(() => reject(new Error(`rooms not ready after ${SETUP_TIMEOUT_MS} ms`)),
                            SETUP_TIMEOUT_MS);
  });
  await Promise.race([Promise.all(rooms.map((room) => room.setUp())), timeout]);
  clearTimeout(setUpTimer);

  for (const room of rooms) room.start();
  await sleep(opts.warmup * 1000);

  const lag = monitorEventLoopDelay({ resolution: 1 });
  lag.enable();
  stats.measuring = true;
  process.stderr.write("loadgen: window start\n");
  const cpuStart = process.cpuUsage();
  const wallStart = performance.now();
  await sleep(opts.seconds * 1000);
  const cpu = process.cpuUsage(cpuStart);
  const wall = (performance.now() - wallStart) / 1000;
  stats.measuring = false;
  lag.disable();
  process.stderr.write("loadgen: window end\n");

  for (const room of rooms) room.stop();
  const settleStart = performance.now();
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, SETTLE_MS);
    stats.onSettled = () => { clearTimeout(timer); resolve(); };
    stats.settling = true;
    stats.check();
  });
  const settle = (performance.now() - settleStart) / 1000;
  for (const room of rooms) for (const client of room.clients) client.stop();

  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const result = {
    client: "node",
    rooms: opts.rooms,
    players: opts.players,
    cursor_hz: opts.cursorHz,
    moves_per_s: opts.moves,
    seconds: round3(wall),
    cursor_latency_ms: stats.cursorLatency.summary(),
    ack_latency_ms: stats.ackLatency.summary(),
    ack_inbound_ms: stats.ackInbound.summary(),
    ack_outbound_ms: stats.ackOutbound.summary(),
    frames: stats.frames,
    cursor_entries: stats.cursorEntries,
    moves_sent: stats.movesSent,
    acks: stats.acks,
    moves_received: stats.movesReceived,
    moves_expected: stats.movesSent * stats.others,
    errors: stats.errors,
    closes: stats.closes,
    drops: stats.drops,
    socket_errors: stats.socketErrors,
    settle_seconds: round3(settle),
    cpu_user_seconds: round3(cpu.user / 1e6),
    cpu_system_seconds: round3(cpu.system / 1e6),
    cpu_percent: round3((100 * cpuSeconds) / wall),
    loop_delay_ms: {
      p50: round3(lag.percentile(50) / 1e6),
      p99: round3(lag.percentile(99) / 1e6),
      max: round3(lag.max / 1e6),
    },
  };
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

main().catch((error) => {
  process.stderr.write(`loadgen: ${error.stack ?? error}\n`);
  process.exit(1);
});
