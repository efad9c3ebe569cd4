// A null WebSocket server that echoes every message back to its sender: what the load
// generator can do against a server that does (almost) nothing, i.e. its own ceiling.
// Usage: node echo_server.mjs [port]; prints {"port": N} once listening.
import { WebSocketServer } from "ws";

const server = new WebSocketServer({
  host: "127.0.0.1",
  port: Number(process.argv[2] || 0),
  perMessageDeflate: false,
});
server.on("connection", (ws) => ws.on("message", (data) => ws.send(data, { binary: false })));
server.on("listening", () => console.log(JSON.stringify({ port: server.address().port })));
process.on("SIGTERM", () => process.exit(0));
