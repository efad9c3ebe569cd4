// The PeerJS server (npm package `peer`) on loopback, as the benchmark's reference.
// Usage: node peerjs_server.mjs [port]; prints {"port": N} once listening.
import { PeerServer } from "peer";

const port = Number(process.argv[2] || 0);
PeerServer(
  {
    host: "127.0.0.1",
    port,
    path: "/",
    key: "peerjs",
    // Defaults are 5000 clients and a 90 s heartbeat deadline: raised so neither limits
    // the benchmark (the generator sends no HEARTBEAT).
    concurrent_limit: 1_000_000,
    alive_timeout: 3_600_000,
  },
  (server) => console.log(JSON.stringify({ port: server.address().port })),
);
process.on("SIGTERM", () => process.exit(0));
