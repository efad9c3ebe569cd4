// A small browser client of the holepunch signaling protocol (docs/protocol.md).
//
//   const signaling = new HolepunchSignaling("ws://127.0.0.1:8080/", "alice");
//   signaling.on("peer-joined", (m) => ...);        // every server message is an event
//   signaling.on("offer", (m) => ...);              // m.from is stamped by the server
//   await signaling.connect();                      // open, wait for welcome, register
//   const peers = await signaling.joinRoom("demo"); // the room's other peers
//   await signaling.sendOffer("bob", pc.localDescription.toJSON());
//
// Requests carry an `id`; the server echoes it in the reply (registered, room-joined,
// ack, pong, ...) or in an `error {code, message, id}`, which rejects the request's
// promise with a SignalingError. No dependencies; an ES module.

export class SignalingError extends Error {
  constructor(code, message, requestType) {
    super(`${code}: ${message}`);
    this.name = "SignalingError";
    this.code = code;
    this.requestType = requestType;
  }
}

export class HolepunchSignaling {
  constructor(url, peerId, { metadata = {}, timeoutMs = 10000 } = {}) {
    this.url = url;
    this.peerId = peerId;
    this.metadata = metadata;
    this.timeoutMs = timeoutMs;
    this.ws = null;
    this.reconnectToken = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, type, timer}
    this._listeners = new Map(); // event -> [callback]
  }

  /** Subscribe to a server message type, or "message", "close", "error-event". */
  on(event, callback) {
    if (!this._listeners.has(event)) this._listeners.set(event, []);
    this._listeners.get(event).push(callback);
    return () => {
      const list = this._listeners.get(event) || [];
      const i = list.indexOf(callback);
      if (i >= 0) list.splice(i, 1);
    };
  }

  _emit(event, message) {
    for (const callback of [...(this._listeners.get(event) || [])]) {
      try {
        callback(message);
      } catch (e) {
        console.error(`holepunch-signaling: ${event} listener failed`, e);
      }
    }
  }

  /** Open the WebSocket, wait for `welcome`, then register; resolves with `registered`. */
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let welcomed = false;
      ws.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (e) {
          this._emit("error-event", { error: e, data: event.data });
          return;
        }
        if (!welcomed && message.type === "welcome") {
          welcomed = true;
          this._emit("welcome", message);
          this.register().then(resolve, reject);
          return;
        }
        this._received(message);
      };
      ws.onerror = () => {
        if (!welcomed) reject(new Error(`cannot connect to ${this.url}`));
        this._emit("error-event", { error: new Error("WebSocket error") });
      };
      ws.onclose = (event) => {
        if (!welcomed) reject(new Error(`closed before welcome (code ${event.code})`));
        const closed = new Error(`connection closed (code ${event.code} ${event.reason})`);
        for (const [, request] of this._pending) {
          clearTimeout(request.timer);
          request.reject(closed);
        }
        this._pending.clear();
        this._emit("close", { code: event.code, reason: event.reason, wasClean: event.wasClean });
      };
    });
  }

  _received(message) {
    const request = message.id != null ? this._pending.get(message.id) : undefined;
    if (request !== undefined && isReply(message.type)) {
      this._pending.delete(message.id);
      clearTimeout(request.timer);
      if (message.type === "error") {
        request.reject(new SignalingError(message.code, message.message, request.type));
      } else {
        request.resolve(message);
      }
    }
    this._emit("message", message);
    this._emit(message.type, message);
  }

  /** Send one request with a fresh `id`; resolves with the server's reply to it. */
  request(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Error("not connected"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new Error(`no reply to ${message.type} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this._pending.set(id, { resolve, reject, type: message.type, timer });
      this.ws.send(JSON.stringify({ ...message, id }));
    });
  }

  async register() {
    const reply = await this.request({
      type: "register",
      peerId: this.peerId,
      metadata: this.metadata,
      ...(this.reconnectToken ? { reconnectToken: this.reconnectToken } : {}),
    });
    this.reconnectToken = reply.reconnectToken;
    return reply;
  }

  /** Join a room; resolves with the list of the room's other peers. */
  async joinRoom(roomId) {
    return (await this.request({ type: "join-room", roomId })).peers;
  }

  leaveRoom(roomId) {
    return this.request({ type: "leave-room", roomId });
  }

  /** Relays: the server stamps `from`; each resolves on the server's `ack`. */
  sendOffer(to, offer) {
    return this.request({ type: "offer", to, offer });
  }

  sendAnswer(to, answer) {
    return this.request({ type: "answer", to, answer });
  }

  /** `candidate` is RTCIceCandidate.toJSON(), or null for end-of-candidates. */
  sendIceCandidate(to, candidate) {
    return this.request({ type: "ice-candidate", to, candidate });
  }

  sendConnectionState(peerId, state, method) {
    return this.request({ type: "connection-state", peerId, state, ...(method ? { method } : {}) });
  }

  ping() {
    return this.request({ type: "ping" });
  }

  close() {
    if (this.ws) this.ws.close(1000, "bye");
  }
}

const REPLY_TYPES = new Set(["registered", "room-joined", "room-left", "room-peers", "pong", "ack", "error"]);

function isReply(type) {
  return REPLY_TYPES.has(type);
}
