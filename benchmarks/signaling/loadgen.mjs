// The signaling load generator: one Node.js process, the `ws` client, three dialects.
//
//   node loadgen.mjs --url ws://127.0.0.1:PORT/ --protocol holepunch|peerjs|echo \
//                    --mode relay|idle [options]
//
// Dialects: `holepunch` (welcome, register, offer {to, offer}; the server stamps `from`),
// `peerjs` (ws://.../peerjs?key=peerjs&id=ID&token=T, OPEN, OFFER {dst, payload}) and
// `echo` (a null server that sends every message back to its sender: the ceiling).
//
// relay mode: 2 x pairs connections; connection 2k sends offers to 2k+1 and back.
//   1. full load: every connection keeps `window` offers in flight to its partner (closed
//      loop); after `warmup` s, offers delivered during `duration` s give messages/s.
//   2. paced: `rate` offers/s in total, round-robin over the connections, each stamped with
//      its scheduled send time; latency = arrival - scheduled time (no coordinated
//      omission), over `duration` s after `warmup` s.
// idle mode: open `connections` connections (each registered), print
//   {"event": "ready", ...}, hold them until a line arrives on stdin (or `hold` s), close.
//
// Output: JSON lines on stdout; "window-start"/"window-end" events mark the full-load
// measurement window (the caller samples the server's CPU time then), and the last line
// is {"event": "result", ...}. Everything is bounded: each phase has a deadline and the
// process exits by itself.

import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const defaults = {
  url: "ws://127.0.0.1:8080/",
  protocol: "holepunch",
  mode: "relay",
  pairs: 200,
  window: 8,
  warmup: 2,
  duration: 10,
  rate: 2000,
  connections: 10000,
  "payload-bytes": 256,
  "local-addresses": 8,
  "connect-concurrency": 200,
  "setup-timeout": 120,
  hold: 120,
};

function parseArgs(argv) {
  const options = { ...defaults };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in defaults)) throw new Error(`unknown option --${key}`);
    options[key] = typeof defaults[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  return options;
}

const opts = parseArgs(process.argv.slice(2));
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const pad = "x".repeat(opts["payload-bytes"]);
let errors = 0;
let lastError = null;

// --- dialects -----------------------------------------------------------------------------

// --url may name several servers (comma-separated). Pair k's first connection goes to
// server k mod n and its second to the same one for half the pairs, to the next one for
// the other half: with two servers, half the pairs are split across them, as random
// placement by a load balancer splits them.
const urls = opts.url.split(",");
const serverOf = (index) => {
  const pair = index >> 1;
  const shift = index & 1 ? (pair >> 1) & 1 : 0;
  return urls[(pair + shift) % urls.length];
};
const dialects = {
  holepunch: {
    url: (id, base) => base,
    // Returns true once the connection is registered.
    handshake(conn, m) {
      if (m.type === "welcome") {
        conn.ws.send(JSON.stringify({ type: "register", peerId: conn.id, id: 1 }));
        return false;
      }
      if (m.type === "registered") return true;
      throw new Error(`unexpected ${JSON.stringify(m).slice(0, 200)}`);
    },
    prefix: (to) => `{"type":"offer","to":${JSON.stringify(to)},"offer":{"type":"offer","sdp":"${pad}","t":`,
    suffix: "}}",
    relayHead: '{"type":"offer",',
    sentAt: (m) => (m.type === "offer" ? m.offer.t : undefined),
  },
  peerjs: {
    url: (id, base) => `${base}peerjs?key=peerjs&id=${id}&token=t${id}`,
    handshake(conn, m) {
      if (m.type === "OPEN") return true;
      throw new Error(`unexpected ${JSON.stringify(m).slice(0, 200)}`);
    },
    prefix: (to) => `{"type":"OFFER","dst":${JSON.stringify(to)},"payload":{"type":"offer","sdp":"${pad}","t":`,
    suffix: "}}",
    relayHead: '{"type":"OFFER",',
    sentAt: (m) => (m.type === "OFFER" ? m.payload.t : undefined),
  },
  echo: {
    url: (id, base) => base,
    handshake: () => true,
    prefix: (to) => `{"type":"offer","to":${JSON.stringify(to)},"offer":{"type":"offer","sdp":"${pad}","t":`,
    suffix: "}}",
    relayHead: '{"type":"offer",',
    sentAt: (m) => (m.type === "offer" ? m.offer.t : undefined),
  },
};

const dialect = dialects[opts.protocol];
if (!dialect) throw new Error(`unknown protocol ${opts.protocol}`);

// --- connections --------------------------------------------------------------------------

// onDelivery(receiver, sentAt) is called for every relayed offer that arrives.
let onDelivery = () => {};

function open(index, id) {
  return new Promise((resolve, reject) => {
    const localAddress = `127.0.0.${1 + (index % opts["local-addresses"])}`;
    const ws = new WebSocket(dialect.url(id, serverOf(index)), {
      perMessageDeflate: false,
      localAddress,
    });
    const conn = { index, id, ws, ready: false, outstanding: 0, partner: null, prefix: "" };
    ws.on("message", (data) => {
      if (conn.ready) {
        // Fast path for a relayed offer: its scheduled time is the last "t" in it (the
        // filler is all x), so no JSON.parse; anything else is parsed and counted below.
        const text = data.toString("latin1");
        if (text.startsWith(dialect.relayHead)) {
          const i = text.lastIndexOf('"t":');
          if (i > 0) {
            onDelivery(conn, parseFloat(text.slice(i + 4, i + 40)));
            return;
          }
        }
      }
      let m;
      try {
        m = JSON.parse(data);
      } catch (e) {
        errors++;
        lastError = `bad JSON: ${String(data).slice(0, 100)}`;
        return;
      }
      if (!conn.ready) {
        try {
          if (opts.protocol === "echo" || dialect.handshake(conn, m)) {
            conn.ready = true;
            resolve(conn);
          }
        } catch (e) {
          reject(e);
          ws.terminate();
        }
        return;
      }
      const sentAt = dialect.sentAt(m);
      if (sentAt === undefined) {
        errors++;
        lastError = JSON.stringify(m).slice(0, 200);
        return;
      }
      onDelivery(conn, sentAt);
    });
    ws.on("open", () => {
      if (opts.protocol === "echo") {
        conn.ready = true;
        resolve(conn);
      }
    });
    ws.on("error", (e) => {
      if (!conn.ready) reject(e);
      else {
        errors++;
        lastError = String(e);
      }
    });
    ws.on("close", (code) => {
      if (!conn.ready) reject(new Error(`closed during handshake (${code})`));
      else if (!closing) {
        errors++;
        lastError = `connection ${id} closed (${code})`;
      }
    });
  });
}

let closing = false;

// Open `count` connections, at most `connect-concurrency` handshakes at a time.
async function openMany(count, prefix) {
  const conns = new Array(count);
  let next = 0;
  let failed = 0;
  let firstFailure = null;
  const deadline = performance.now() + opts["setup-timeout"] * 1000;
  async function worker() {
    while (next < count && performance.now() < deadline) {
      const i = next++;
      try {
        conns[i] = await open(i, `${prefix}${i}`);
      } catch (e) {
        failed++;
        firstFailure = firstFailure || String(e);
      }
    }
  }
  const started = performance.now();
  await Promise.all(Array.from({ length: opts["connect-concurrency"] }, worker));
  return {
    conns: conns.filter(Boolean),
    failed: failed + (count - next),
    firstFailure,
    seconds: (performance.now() - started) / 1000,
  };
}

function closeAll(conns) {
  closing = true;
  for (const c of conns) c.ws.terminate();
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function cpuSeconds(since) {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1e6;
}

// --- relay mode ---------------------------------------------------------------------------

async function fullLoad(conns) {
  let running = true;
  let counting = false;
  let delivered = 0;
  let sent = 0;
  const send = (c) => {
    while (running && c.outstanding < opts.window) {
      c.outstanding++;
      sent++;
      c.ws.send(c.prefix + performance.now() + dialect.suffix);
    }
  };
  onDelivery = (receiver, sentAt) => {
    const sender = opts.protocol === "echo" ? receiver : receiver.partner;
    sender.outstanding--;
    if (counting) delivered++;
    send(sender);
  };
  conns.forEach(send);
  await sleep(opts.warmup * 1000);
  emit({ event: "window-start", phase: "full-load" });
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  delivered = 0;
  counting = true;
  await sleep(opts.duration * 1000);
  counting = false;
  const seconds = (performance.now() - t0) / 1000;
  const generatorCpu = cpuSeconds(cpu0) / seconds;
  const count = delivered;
  emit({ event: "window-end", phase: "full-load" });
  running = false;
  const drainDeadline = performance.now() + 10000;
  while (conns.some((c) => c.outstanding > 0) && performance.now() < drainDeadline) await sleep(20);
  const lost = conns.reduce((n, c) => n + c.outstanding, 0);
  for (const c of conns) c.outstanding = 0;
  return { delivered: count, seconds, messagesPerSecond: count / seconds, sent, lost, generatorCpu };
}

async function paced(conns) {
  const rate = opts.rate;
  const interval = 1000 / rate;
  const total = Math.ceil((opts.warmup + opts.duration) * rate);
  const measureFrom = opts.warmup * 1000;
  const latencies = [];
  let received = 0;
  let sent = 0;
  let t0 = 0;
  onDelivery = (receiver, sentAt) => {
    received++;
    if (sentAt - t0 >= measureFrom) latencies.push(performance.now() - sentAt);
  };
  const cpu0 = process.cpuUsage();
  t0 = performance.now();
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor((performance.now() - t0) / interval) + 1);
      while (sent < due) {
        const c = conns[sent % conns.length];
        c.ws.send(c.prefix + (t0 + sent * interval) + dialect.suffix);
        sent++;
      }
      if (sent < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  const drainDeadline = performance.now() + 10000;
  while (received < sent && performance.now() < drainDeadline) await sleep(20);
  const generatorCpu = cpuSeconds(cpu0) / ((performance.now() - t0) / 1000);
  latencies.sort((a, b) => a - b);
  const round = (x) => (x === null ? null : Math.round(x * 1000) / 1000);
  return {
    rate,
    sent,
    received,
    lost: sent - received,
    measured: latencies.length,
    p50Ms: round(percentile(latencies, 50)),
    p90Ms: round(percentile(latencies, 90)),
    p99Ms: round(percentile(latencies, 99)),
    maxMs: round(latencies.length ? latencies[latencies.length - 1] : null),
    generatorCpu,
  };
}

async function relayMode() {
  const { conns, failed, firstFailure, seconds } = await openMany(2 * opts.pairs, "p");
  if (failed > 0 || conns.length !== 2 * opts.pairs) {
    closeAll(conns);
    return { error: `${failed} of ${2 * opts.pairs} connections failed: ${firstFailure}` };
  }
  for (const c of conns) {
    c.partner = conns[c.index ^ 1];
    c.prefix = dialect.prefix(c.partner.id);
  }
  const fullLoadResult = await fullLoad(conns);
  const pacedResult = await paced(conns);
  closeAll(conns);
  return { connections: conns.length, setupSeconds: seconds, fullLoad: fullLoadResult, paced: pacedResult };
}

// --- idle mode ----------------------------------------------------------------------------

async function idleMode() {
  const { conns, failed, firstFailure, seconds } = await openMany(opts.connections, "idle");
  emit({ event: "ready", connected: conns.length, failed, firstFailure, setupSeconds: seconds });
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, opts.hold * 1000);
    const lines = createInterface({ input: process.stdin });
    lines.once("line", () => {
      clearTimeout(timer);
      lines.close();
      resolve();
    });
    lines.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  closeAll(conns);
  return { connections: conns.length, failed, firstFailure, setupSeconds: seconds };
}

const run = opts.mode === "idle" ? idleMode : relayMode;
const started = performance.now();
run()
  .then((result) => {
    emit({ event: "result", mode: opts.mode, protocol: opts.protocol, errors, lastError, ...result,
           wallSeconds: (performance.now() - started) / 1000 });
    process.exit(0);
  })
  .catch((e) => {
    emit({ event: "result", mode: opts.mode, protocol: opts.protocol, error: String(e), errors });
    process.exit(1);
  });
