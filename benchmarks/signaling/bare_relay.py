"""A bare Autobahn relay, the reference point: no validation, no limits, no rooms.

Speaks just enough of our protocol for the load generator (welcome, register, relays with
``to``). ``python bare_relay.py [port]`` prints ``{"port": N}`` once listening.
"""

import json
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import endpoints, reactor

peers: dict[str, "Relay"] = {}


class Relay(WebSocketServerProtocol):
    peer_id: str | None = None

    def onOpen(self) -> None:
        self.sendMessage(b'{"type":"welcome"}')

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        if message["type"] == "register":
            self.peer_id = message["peerId"]
            peers[message["peerId"]] = self
            reply = {"type": "registered", "peerId": self.peer_id, "id": message.get("id")}
            self.sendMessage(json.dumps(reply, separators=(",", ":")).encode())
        elif (target := peers.get(message.pop("to", None))) is not None:
            message["from"] = self.peer_id
            target.sendMessage(json.dumps(message, separators=(",", ":")).encode())

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.peer_id is not None and peers.get(self.peer_id) is self:
            del peers[self.peer_id]


def listening(port: object) -> None:
    print(json.dumps({"port": port.getHost().port}), flush=True)  # type: ignore[attr-defined]


factory = WebSocketServerFactory()
factory.protocol = Relay
port = sys.argv[1] if len(sys.argv) > 1 else "0"
endpoint = endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1:backlog=1024")
endpoint.listen(factory).addCallback(listening)
reactor.run()
