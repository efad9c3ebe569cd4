"""Two signaling nodes sharing one real ``redis-server``: rooms, relays, errors, presence
expiry, and ``holepunch connect`` between clients of different nodes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Any

import txredisapi
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from holepunch.signaling import messages as m
from holepunch.signaling.client import RECONNECTED, SignalingClient
from holepunch.signaling.redisregistry import RedisRoomRegistry
from holepunch.signaling.redisstate import parse_redis_url
from holepunch.signaling.server import SignalingConfig, SignalingService, make_signaling_service
from lab.coturn import free_port
from lab.natlab import TWISTD
from tests.integration.test_connect_cli import Command
from tests.redis_helpers import RedisServer, start_redis
from tests.signaling_helpers import RawClientProtocol, next_event, raw_client_factory

LOCAL = "tcp:0:interface=127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TwoNodesTestCase(TestCase):
    timeout = 60

    async def start_nodes(self, count: int = 2, **options: Any) -> list[str]:
        """Start redis and ``count`` signaling nodes on it; return the nodes' ws URLs."""
        self.redis_url = await start_redis(self, reactor)
        self.services: list[SignalingService] = []
        urls = []
        for _ in range(count):
            urls.append(await self.start_node(**options))
        return urls

    async def start_node(self, **options: Any) -> str:
        config = SignalingConfig(endpoint=LOCAL, redis_url=self.redis_url, **options)
        service = make_signaling_service(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.services.append(service)
        port = await service.when_listening()
        await self.registry(service).when_ready()
        return f"ws://127.0.0.1:{port.getHost().port}/"

    def registry(self, service: SignalingService) -> RedisRoomRegistry:
        registry = service.registry
        assert isinstance(registry, RedisRoomRegistry)
        return registry

    async def raw(self, url: str) -> RawClientProtocol:
        return await raw_client(self, url)

    async def peer(self, url: str, peer_id: str) -> tuple[RawClientProtocol, dict[str, Any]]:
        return await register_peer(self, url, peer_id)

    async def meet_across_nodes(
        self, url1: str, url2: str
    ) -> tuple[RawClientProtocol, RawClientProtocol, dict[str, Any], dict[str, Any]]:
        """alice on node 1 and bob on node 2 join room ``r``; alice has read bob's
        ``peer-joined``. Both clients and their registration replies."""
        alice, alice_reply = await self.peer(url1, "alice")
        bob, bob_reply = await self.peer(url2, "bob")
        await alice.request({"type": "join-room", "roomId": "r", "id": 1})
        await bob.request({"type": "join-room", "roomId": "r", "id": 2})
        await alice.next()  # peer-joined bob
        return alice, bob, alice_reply, bob_reply


async def raw_client(testcase: TestCase, url: str) -> RawClientProtocol:
    """A raw WebSocket client of ``url``, welcomed (closed by the test's cleanup)."""
    port = int(url.split(":")[2].split("/")[0])
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    proto: RawClientProtocol = await endpoint.connect(raw_client_factory(url))
    testcase.addCleanup(close_raw, proto)
    await proto.opened
    welcome = await proto.next()
    testcase.assertEqual(welcome["type"], "welcome")
    return proto


async def close_raw(proto: RawClientProtocol) -> None:
    if proto.close_info is None:
        if proto.state == proto.STATE_OPEN:
            proto.sendClose(1000)
        else:
            proto.transport.loseConnection()  # type: ignore[union-attr]
    await proto.lost


async def register_peer(
    testcase: TestCase, url: str, peer_id: str
) -> tuple[RawClientProtocol, dict[str, Any]]:
    """A raw client of ``url`` registered as ``peer_id``, and its ``registered``."""
    proto = await raw_client(testcase, url)
    reply = await proto.request({"type": "register", "peerId": peer_id, "id": "reg"})
    testcase.assertEqual(reply["type"], "registered", reply)
    return proto, reply


class SharedRoomTests(TwoNodesTestCase):
    """Peers on different nodes behave as on one node."""

    async def test_join_see_each_other_and_relay(self) -> None:
        """alice on node 1 and bob on node 2 join one room, see each other (room-joined,
        peer-joined, room-peers), exchange offer, answer and candidates, and bob's leaving
        and disconnecting reach alice as peer-left."""
        url1, url2 = await self.start_nodes()
        alice, _ = await self.peer(url1, "alice")
        bob, _ = await self.peer(url2, "bob")
        joined = await alice.request({"type": "join-room", "roomId": "r", "id": 1})
        self.assertEqual((joined["type"], joined["peers"]), ("room-joined", []))
        joined = await bob.request(
            {"type": "join-room", "roomId": "r", "id": 2, "metadata": {"ignored": 1}}
        )
        self.assertEqual([p["peerId"] for p in joined["peers"]], ["alice"])
        event = await alice.next()
        self.assertEqual(
            (event["type"], event["roomId"], event["peerId"]), ("peer-joined", "r", "bob")
        )
        peers = await alice.request({"type": "get-room-peers", "roomId": "r", "id": 3})
        self.assertEqual([p["peerId"] for p in peers["peers"]], ["bob"])

        offer = {"type": "offer", "sdp": "v=0\r\n", "n": 2**70, "x": 1.0000000000000002}
        ack = await alice.request({"type": "offer", "to": "bob", "offer": offer, "id": 4})
        self.assertEqual(ack["type"], "ack")
        self.assertEqual(await bob.next(), {"type": "offer", "from": "alice", "offer": offer})
        bob.send_json({"type": "answer", "to": "alice", "answer": {"sdp": "a"}})
        for i in range(5):
            bob.send_json({"type": "ice-candidate", "to": "alice", "candidate": {"i": i}})
        bob.send_json({"type": "ice-candidate", "to": "alice", "candidate": None})
        self.assertEqual(
            await alice.next(), {"type": "answer", "from": "bob", "answer": {"sdp": "a"}}
        )
        got = [(await alice.next())["candidate"] for _ in range(6)]
        self.assertEqual(got, [{"i": i} for i in range(5)] + [None])  # in order

        left = await bob.request({"type": "leave-room", "roomId": "r", "id": 5})
        self.assertEqual(left["type"], "room-left")
        event = await alice.next()
        self.assertEqual((event["type"], event["peerId"]), ("peer-left", "bob"))
        await bob.request({"type": "join-room", "roomId": "r", "id": 6})
        self.assertEqual((await alice.next())["type"], "peer-joined")
        bob.sendClose(1000)
        event = await alice.next()
        self.assertEqual((event["type"], event["peerId"]), ("peer-left", "bob"))
        peers = await alice.request({"type": "get-room-peers", "roomId": "r", "id": 7})
        self.assertEqual(peers["peers"], [])

    async def test_rooms_gate_the_direct_paths(self) -> None:
        """Relays between peers of one node go straight to the peer, and relays to a
        node learnt from the relay script go straight to that node; both only while the
        two share a room: none shared gives no-shared-room, on one node and across; a
        sender that leaves the room is refused at once (its routes are forgotten)."""
        url1, url2 = await self.start_nodes()
        alice, _ = await self.peer(url1, "alice")
        carol, _ = await self.peer(url1, "carol")  # alice's node
        bob, _ = await self.peer(url2, "bob")
        for to in ("carol", "bob"):
            error = await alice.request({"type": "offer", "to": to, "offer": {}, "id": to})
            self.assertEqual((error["type"], error["code"]), ("error", m.NO_SHARED_ROOM))
        for i, proto in enumerate((alice, carol, bob)):
            await proto.request({"type": "join-room", "roomId": "r", "id": f"j{i}"})
        for proto in (alice, alice, carol):  # carol's and bob's arrival; bob's
            self.assertEqual((await proto.next())["type"], "peer-joined")
        node1 = self.registry(self.services[0])
        sent_before = node1.relayed["offer"]
        for n in range(3):  # the first to bob teaches the route, the next go straight
            for to, proto in (("carol", carol), ("bob", bob)):
                ack = await alice.request({"type": "offer", "to": to, "offer": {"n": n}, "id": n})
                self.assertEqual(ack["type"], "ack", ack)
                message = await proto.next()
                self.assertEqual(message, {"type": "offer", "from": "alice", "offer": {"n": n}})
        self.assertEqual(node1.relayed["offer"] - sent_before, 6)
        self.assertIn("bob", node1.local_peer("alice").routes)  # type: ignore[union-attr]
        left = await alice.request({"type": "leave-room", "roomId": "r", "id": "l"})
        self.assertEqual(left["type"], "room-left")
        for to in ("carol", "bob"):
            error = await alice.request({"type": "offer", "to": to, "offer": {}, "id": to})
            self.assertEqual((error["type"], error["code"]), ("error", m.NO_SHARED_ROOM))

    async def test_errors_as_on_one_node(self) -> None:
        """peer-not-found, peer-id-taken across nodes, not-in-room, room-full and
        too-many-rooms (limits counted across nodes), not-registered."""
        url1, url2 = await self.start_nodes(max_peers_per_room=2, max_rooms_per_peer=1)
        alice, reply = await self.peer(url1, "alice")
        bob, _ = await self.peer(url2, "bob")
        carol, _ = await self.peer(url2, "carol")
        error = await alice.request({"type": "offer", "to": "nobody", "offer": {}, "id": 1})
        self.assertEqual((error["code"], error["id"]), (m.PEER_NOT_FOUND, 1))
        other = await self.raw(url2)
        error = await other.request({"type": "register", "peerId": "alice", "id": 2})
        self.assertEqual(error["code"], m.PEER_ID_TAKEN)
        error = await other.request({"type": "join-room", "roomId": "r", "id": 3})
        self.assertEqual(error["code"], m.NOT_REGISTERED)
        error = await alice.request({"type": "leave-room", "roomId": "r", "id": 4})
        self.assertEqual(error["code"], m.NOT_IN_ROOM)
        error = await alice.request({"type": "get-room-peers", "roomId": "r", "id": 5})
        self.assertEqual(error["code"], m.NOT_IN_ROOM)
        await alice.request({"type": "join-room", "roomId": "r", "id": 6})
        await bob.request({"type": "join-room", "roomId": "r", "id": 7})
        self.assertEqual((await alice.next())["type"], "peer-joined")
        error = await carol.request({"type": "join-room", "roomId": "r", "id": 8})
        self.assertEqual((error["code"], error["message"]),
                         (m.ROOM_FULL, "room 'r' holds its limit of 2 peers"))  # fmt: skip
        error = await alice.request({"type": "join-room", "roomId": "s", "id": 9})
        self.assertEqual(error["code"], m.TOO_MANY_ROOMS)
        again = await alice.request({"type": "join-room", "roomId": "r", "id": 10})
        self.assertEqual([p["peerId"] for p in again["peers"]], ["bob"])  # rejoin: same list

    async def test_takeover_on_another_node(self) -> None:
        """The reconnect token, kept in Redis, takes the id over from another node: the old
        connection is closed with 4001, the rooms stay, and relays reach the new one."""
        url1, url2 = await self.start_nodes()
        alice, bob, reply, _ = await self.meet_across_nodes(url1, url2)
        new = await self.raw(url2)
        resumed = await new.request({"type": "register", "peerId": "alice", "id": 3,
                                     "reconnectToken": reply["reconnectToken"]})  # fmt: skip
        self.assertEqual((resumed["type"], resumed["resumed"]), ("registered", True))
        _, code, _ = await alice.lost
        self.assertEqual(code, m.CLOSE_SESSION_REPLACED)
        peers = await new.request({"type": "get-room-peers", "roomId": "r", "id": 4})
        self.assertEqual([p["peerId"] for p in peers["peers"]], ["bob"])
        await bob.request({"type": "offer", "to": "alice", "offer": {"n": 1}, "id": 5})
        self.assertEqual(await new.next(), {"type": "offer", "from": "bob", "offer": {"n": 1}})
        stale = await self.raw(url1)
        error = await stale.request({"type": "register", "peerId": "alice", "id": 6,
                                     "reconnectToken": reply["reconnectToken"]})  # fmt: skip
        self.assertEqual(error["code"], m.PEER_ID_TAKEN)  # each registration renews the token

    async def test_node_stop_removes_its_peers(self) -> None:
        """A node that stops cleanly takes its peers out at once: peer-left elsewhere."""
        url1, url2 = await self.start_nodes()
        alice, bob, _, _ = await self.meet_across_nodes(url1, url2)
        await self.services[1].stopService()
        event = await alice.next()
        self.assertEqual((event["type"], event["peerId"]), ("peer-left", "bob"))
        error = await alice.request({"type": "offer", "to": "bob", "offer": {}, "id": 3})
        self.assertEqual(error["code"], m.PEER_NOT_FOUND)

    async def test_crashed_node_expires(self) -> None:
        """A node that stops without cleaning up (a crash): its peers vanish once its
        presence TTL has passed, and the next heartbeat tells their rooms (peer-left)."""
        url1, url2 = await self.start_nodes(presence_ttl=1.0)
        alice, bob, _, _ = await self.meet_across_nodes(url1, url2)
        crashed = self.services[1]
        await self.registry(crashed).abandon()
        self.assertEqual(
            (await alice.request({"type": "get-room-peers", "roomId": "r", "id": 3}))["peers"][0][
                "peerId"
            ],
            "bob",
        )  # not yet expired
        event = await alice.next()  # the survivor's heartbeat reaps bob
        self.assertEqual((event["type"], event["peerId"]), ("peer-left", "bob"))
        error = await alice.request({"type": "offer", "to": "bob", "offer": {}, "id": 4})
        self.assertEqual(error["code"], m.PEER_NOT_FOUND)
        # bob may now register on the surviving node.
        await self.peer(url1, "bob")

    async def test_node_cut_off_too_long(self) -> None:
        """A node whose presence expired while it was still running (cut off from Redis
        longer than the TTL) is reaped by the others; its next heartbeat finds its peers
        gone and closes their connections (4000) so they register again."""
        url1, url2 = await self.start_nodes(presence_ttl=0.6)
        alice, bob, _, _ = await self.meet_across_nodes(url1, url2)
        cut_off = self.registry(self.services[1])
        url = parse_redis_url(self.redis_url)
        redis = await txredisapi.Connection(url.host, url.port, dbid=url.db)
        self.addCleanup(redis.disconnect)
        await redis.delete(cut_off.keys.node(cut_off.node_id))
        event = await alice.next()
        self.assertEqual((event["type"], event["peerId"]), ("peer-left", "bob"))
        _, code, _ = await bob.lost
        self.assertEqual(code, m.CLOSE_IDLE_TIMEOUT)
        self.assertEqual(cut_off.reaped_local, 1)

    async def test_stale_route_is_forwarded(self) -> None:
        """A relay sent along a route learnt a moment before the peer moved to another
        node is sent on from the node it reached, and arrives."""
        url1, url2 = await self.start_nodes()
        alice, bob, _, reply = await self.meet_across_nodes(url1, url2)
        ack = await alice.request({"type": "offer", "to": "bob", "offer": {"n": 0}, "id": 3})
        self.assertEqual(ack["type"], "ack")
        await bob.next()
        node1 = self.registry(self.services[0])
        self.assertIn("bob", node1.local_peer("alice").routes)  # type: ignore[union-attr]
        moved = await self.raw(url1)  # bob moves to alice's node, within ROUTE_TTL
        resumed = await moved.request({"type": "register", "peerId": "bob", "id": 4,
                                       "reconnectToken": reply["reconnectToken"]})  # fmt: skip
        self.assertEqual(resumed["resumed"], True)
        await bob.lost
        # alice's route still names node 2: it gets the offer and sends it on.
        ack = await alice.request({"type": "offer", "to": "bob", "offer": {"n": 1}, "id": 5})
        self.assertEqual(ack["type"], "ack")
        self.assertEqual(await moved.next(), {"type": "offer", "from": "alice", "offer": {"n": 1}})
        self.assertEqual(self.registry(self.services[1]).forwarded, 1)


class LinkedNodesTestCase(TwoNodesTestCase):
    """Nodes linked as the workers of one daemon are: each listens on a UNIX socket in a
    shared directory, and relays between them go over these links, not Redis."""

    async def start_node(self, **options: Any) -> str:
        if not hasattr(self, "links_dir"):
            self.links_dir = tempfile.mkdtemp(prefix="hp-links-")  # short: a socket path
            self.addCleanup(shutil.rmtree, self.links_dir, True)
        return await super().start_node(node_links=self.links_dir, **options)


class LinkedSharedRoomTests(LinkedNodesTestCase, SharedRoomTests):
    """Every test of :class:`SharedRoomTests` with linked nodes, and the links' own."""

    async def offers_in_order(self, url1: str, url2: str, count: int) -> None:
        """alice on node 1 and bob on node 2 meet in a room; ``count`` offers from alice
        reach bob, in order."""
        alice, bob, _, _ = await self.meet_across_nodes(url1, url2)
        for n in range(count):
            alice.send_json({"type": "offer", "to": "bob", "offer": {"n": n}})
        got = [(await bob.next())["offer"] for _ in range(count)]
        self.assertEqual(got, [{"n": n} for n in range(count)])

    async def test_relays_go_over_the_links(self) -> None:
        """Offers between nodes (the first after the relay script's check) go over the
        link, in order, none through Redis; the link is made once."""
        url1, url2 = await self.start_nodes()
        await self.offers_in_order(url1, url2, 20)
        links = self.registry(self.services[0]).links
        assert links is not None
        self.assertEqual(links.stats()["sent"], 20)
        self.assertEqual(links.stats()["links"], 1)
        self.assertEqual(self.registry(self.services[1]).links.stats()["incoming"], 1)  # type: ignore[union-attr]

    async def test_node_without_a_link(self) -> None:
        """A node whose link socket is gone (another machine's, say) gets its relays
        through Redis, in order."""
        url1, url2 = await self.start_nodes()
        other = self.registry(self.services[1])
        os.unlink(os.path.join(self.links_dir, f"{other.node_id}.sock"))
        await self.offers_in_order(url1, url2, 5)
        links = self.registry(self.services[0]).links
        assert links is not None
        self.assertEqual(links.stats()["sent"], 0)

    async def test_link_refused(self) -> None:
        """A node whose link socket refuses connections (a stale socket file): the relays
        queued while connecting go through Redis, in order, and the next ones too."""
        url1, url2 = await self.start_nodes()
        other = self.registry(self.services[1])
        path = os.path.join(self.links_dir, f"{other.node_id}.sock")
        os.unlink(path)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)  # bound, never listening: connections are refused
        self.addCleanup(stale.close)
        await self.offers_in_order(url1, url2, 10)
        node1 = self.registry(self.services[0])
        assert node1.links is not None
        self.assertEqual(node1.links.stats()["sent"], 0)
        self.assertEqual(node1.published, 10)

    async def test_bad_bytes_close_a_link(self) -> None:
        """Bytes on a link socket that are not records: that link is closed and counted;
        the node goes on."""
        (url1,) = await self.start_nodes(count=1)
        node = self.registry(self.services[0])
        path = os.path.join(self.links_dir, f"{node.node_id}.sock")
        endpoint = UNIXClientEndpoint(reactor, path)
        proto = await endpoint.connect(Factory.forProtocol(Gone))
        proto.transport.write(b"\xff" * 64)
        await proto.gone
        assert node.links is not None
        self.assertEqual(node.links.bad_links, 1)
        await self.peer(url1, "alice")


class Gone(Protocol):
    def __init__(self) -> None:
        self.gone: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


class RedisRestartTests(TwoNodesTestCase):
    """Redis restarted empty under two nodes."""

    async def test_nodes_rebuild_their_presence(self) -> None:
        """Redis is killed and started again, empty: the nodes reconnect, find their
        peers gone at their next heartbeat and close them (4000); the clients register
        again with their ids and rejoin their rooms within seconds, and offers cross the
        nodes again."""
        redis = RedisServer(self, reactor)
        self.redis_url = await redis.start()
        self.services = []
        url1 = await self.start_node(presence_ttl=1.5)
        url2 = await self.start_node(presence_ttl=1.5)
        clients = []
        for name, url in (("alice", url1), ("bob", url2)):
            client = SignalingClient(url, name, reactor=reactor, retry_initial=0.2)
            client.startService()
            self.addCleanup(client.stopService)
            await client.register()
            await client.join_room("r")
            clients.append(client)
        alice, bob = clients
        back = defer.gatherResults([next_event(c, RECONNECTED) for c in clients])
        restarted_at = reactor.seconds()
        await redis.kill()
        await redis.start()
        events = await back.addTimeout(20, reactor)
        took = reactor.seconds() - restarted_at
        for event in events:
            self.assertFalse(event["resumed"], event)  # Redis forgot the tokens
            self.assertEqual(event["rooms"], ["r"])
        for sender, receiver in ((alice, bob), (bob, alice)):
            got = next_event(receiver, "offer")
            await sender.send_offer(receiver.peer_id, {"n": 1})
            self.assertEqual((await got)["from"], sender.peer_id)
        self.assertTrue(all(self.registry(s).connected for s in self.services))
        print(f"Redis restarted: clients back in their rooms {took:.2f}s later")


class ConnectAcrossNodesTests(TwoNodesTestCase):
    """``holepunch connect`` with each side attached to a different node."""

    timeout = 120

    async def test_connect_both_directions(self) -> None:
        url1, url2 = await self.start_nodes()
        to_b, to_a = os.urandom(1 << 20), os.urandom(1 << 20) + b"\0\r\n\xff"
        b = Command(["connect", "--signaling", url2, "--id", "bob", "--accept",
                     "--host-address", "127.0.0.1"], to_a)  # fmt: skip
        self.addCleanup(b.kill)
        a = Command(["connect", "--signaling", url1, "--id", "alice", "--to", "bob",
                     "--host-address", "127.0.0.1"], to_b)  # fmt: skip
        self.addCleanup(a.kill)
        code_a, code_b = await threads.deferToThread(lambda: (a.finish(60), b.finish(60)))
        self.assertEqual((code_a, code_b), (0, 0), a.stderr + b.stderr)
        self.assertEqual(hashlib.sha256(b.stdout).digest(), hashlib.sha256(to_b).digest())
        self.assertEqual(hashlib.sha256(a.stdout).digest(), hashlib.sha256(to_a).digest())


class DaemonTests(TestCase):
    """``twistd holepunch --redis``."""

    timeout = 60

    async def test_unreachable_redis_stops_startup(self) -> None:
        """Redis unreachable: twistd exits 1 with one line naming the URL and why."""
        port = free_port()
        url = f"redis://127.0.0.1:{port}/3"
        argv = [*TWISTD, "-n", "--pidfile=", "holepunch", "--no-stun",
                f"--signaling=tcp:{free_port()}:interface=127.0.0.1", f"--redis={url}"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
        env["PYTHONPATH"] = ROOT
        result = await threads.deferToThread(
            subprocess.run, argv, cwd=ROOT, env=env, capture_output=True, timeout=30
        )
        stderr = result.stderr.decode().strip()
        self.assertEqual(result.returncode, 1, stderr)
        self.assertEqual(len(stderr.splitlines()), 1, stderr)
        self.assertIn(f"cannot reach Redis at {url}", stderr)

    async def test_two_daemons(self) -> None:
        """Two ``twistd holepunch --redis`` daemons: a peer on each, relayed across."""
        redis_url = await start_redis(self, reactor)
        urls = [(await self.start_daemon(redis_url))[0] for _ in range(2)]
        alice, _ = await register_peer(self, urls[0], "alice")
        bob, _ = await register_peer(self, urls[1], "bob")
        await bob.request({"type": "join-room", "roomId": "r", "id": 0})
        await alice.request({"type": "join-room", "roomId": "r", "id": 0})
        self.assertEqual((await bob.next())["type"], "peer-joined")
        ack = await alice.request({"type": "offer", "to": "bob", "offer": {"x": 1}, "id": 1})
        self.assertEqual(ack["type"], "ack")
        self.assertEqual(await bob.next(), {"type": "offer", "from": "alice", "offer": {"x": 1}})
        response = await Agent(reactor).request(b"GET", urls[0].replace("ws", "http", 1).encode()
                                                + b"p2p/health")  # fmt: skip
        health = json.loads(await readBody(response))
        self.assertEqual(
            (response.code, health["services"]), (200, {"signaling": "up", "redis": "up"})
        )

    async def test_killed_node_clients_move_to_the_other(self) -> None:
        """Two daemons on one Redis; clients that know both URLs. SIGKILL on the first:
        its clients are back on the second within seconds, same ids (their reconnect
        tokens) and rooms; the second's client notices nothing and still gets offers."""
        redis_url = await start_redis(self, reactor)
        started = [await self.start_daemon(redis_url) for _ in range(2)]
        urls, procs = [url for url, _ in started], [proc for _, proc in started]
        clients = []
        for name, order in (("a1", urls), ("a2", urls), ("b", urls[::-1])):
            client = SignalingClient(order, name, reactor=reactor, retry_initial=0.2)
            client.startService()
            self.addCleanup(client.stopService)
            await client.register()
            await client.join_room("r")
            clients.append(client)
        a1, a2, b = clients
        back: defer.Deferred[list[Any]] = defer.gatherResults(
            [next_event(c, RECONNECTED) for c in (a1, a2)]
        )
        killed_at = reactor.seconds()
        procs[0].send_signal(signal.SIGKILL)
        events = await back.addTimeout(10, reactor)
        for client, event in zip((a1, a2), events, strict=True):
            self.assertTrue(event["resumed"], event)
            self.assertEqual(event["rooms"], ["r"])
            self.assertEqual(client.url, urls[1])
        took = reactor.seconds() - killed_at
        self.assertLess(took, 5.0)
        self.assertEqual(b.disconnects, 0)
        for sender, receiver in ((a1, b), (b, a2), (a2, a1)):
            got = next_event(receiver, "offer")
            await sender.send_offer(receiver.peer_id, {"from": sender.peer_id})
            self.assertEqual((await got)["from"], sender.peer_id)
        print(f"clients of the killed node back on the other in {took:.2f}s")

    async def start_daemon(self, redis_url: str) -> tuple[str, subprocess.Popen[bytes]]:
        """``twistd holepunch --no-stun --redis URL`` on a free port, once it listens
        (its output drained from then on); its ws:// URL and process."""
        port = free_port()
        argv = [*TWISTD, "--pidfile=", "-n", "holepunch", "--no-stun",
                f"--signaling=tcp:{port}:interface=127.0.0.1", f"--redis={redis_url}"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
        env["PYTHONPATH"] = ROOT
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)  # fmt: skip
        self.addCleanup(self.stop, proc)
        await threads.deferToThread(self.wait_for_line, proc, b"Site starting on")
        threads.deferToThread(proc.stdout.read)  # type: ignore[union-attr]
        return f"ws://127.0.0.1:{port}/", proc

    def wait_for_line(self, proc: subprocess.Popen[bytes], marker: bytes) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            if marker in line:
                return
        raise AssertionError("twistd exited before listening")

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
