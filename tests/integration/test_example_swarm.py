"""examples/torrent_swarm.py: two copies of the example find each other in a torrent's
room and connect (real processes, a signaling server and a STUN server on loopback)."""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from holepunch.testing.loopback import start_signaling_server, start_stun_server
from lab.natlab import lab_env
from lab.processes import JsonLinesProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "torrent_swarm.py")


class SwarmExampleTests(TestCase):
    """The embedding example, run as a user would."""

    timeout = 60

    async def test_two_peers_meet_and_talk(self) -> None:
        """Both copies join torrent-<infohash>, connect to each other and exchange greetings."""
        _, url = await start_signaling_server(self, reactor)
        stun = start_stun_server(self, reactor, rfc5780=False)
        peers = {}
        for name in ("alice", "bob"):
            proto = JsonLinesProcess()
            argv = [sys.executable, EXAMPLE, "--signaling", url,
                    "--id", name, "--infohash", "abc123", "--host-address", "127.0.0.1",
                    "--stun-server", f"127.0.0.1:{stun.responder.primary.port}",
                    "--duration", "6"]  # fmt: skip
            transport = reactor.spawnProcess(proto, sys.executable, argv, env=lab_env(None))
            self.addCleanup(
                lambda t=transport, p=proto: None if p.ended.called else t.signalProcess("KILL")
            )
            peers[name] = proto
        codes = await defer.gatherResults([p.ended for p in peers.values()])
        self.assertEqual(codes, [0, 0], [p.stderr.decode()[-2000:] for p in peers.values()])
        for me, other in (("alice", "bob"), ("bob", "alice")):
            events = peers[me].events
            connected = [e for e in events if e["event"] == "peer-connected"]
            messages = [e for e in events if e["event"] == "message"]
            self.assertEqual([e["peer"] for e in connected], [other], events)
            self.assertEqual([e["text"] for e in messages], [f"hello from {other}"], events)
