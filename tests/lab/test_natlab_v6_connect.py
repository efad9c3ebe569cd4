"""``holepunch connect`` over IPv6 between lab hosts behind stateful IPv6 firewalls
(issue 16), with the daemon as the README starts it (one address, its defaults: both
families) and clients given only the signaling URL.

- Dual-stack hosts whose IPv4 cell would need a relay (symmetric NATs both sides) connect
  directly over IPv6; so do hosts whose IPv4 UDP is blocked outright.
- Two IPv6-only hosts connect over IPv6, by UDP or, with UDP dropped, by TCP punching.
- A v4-only host and a v6-only host connect through coturn, which relays between the
  families (RFC 8656 dual allocations).

Each firewall drops what nobody inside asked for (its drop counter is read), so a
connection through two of them is a hole punch, not an open path.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from lab.natlab import PUBLIC_A6, LabHost, NatLab, host_port, lab_fixture
from lab.peers import SIGNALING_PORT, LabServers, run_connect, start_lab_servers

TIMEOUT = 20.0


class V6ConnectTests(TestCase):
    """Connections across IPv6 firewalls, the README's daemon in ``pub``."""

    def setUp(self) -> None:
        self.lab: NatLab = lab_fixture(self, ipv6=True)

    def servers(self, **kw: Any) -> LabServers:
        return start_lab_servers(self.lab, "one-address", **kw)

    def connect(
        self, a: LabHost, b: LabHost, url: str, extra: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """One connect, a line across and a clean end; the offerer's ``--json``."""
        result = run_connect(
            a, b, url, names=(a.name, b.name), timeout=TIMEOUT, stun_servers=(),
            extra_args=extra,
        )  # fmt: skip
        self.assertTrue(result["ok"], result.get("reason"))
        return result

    def assert_v6_punch(self, result: dict[str, Any], a: LabHost, b: LabHost) -> None:
        assert b.address6 is not None
        self.assertEqual(result["method"], "udp-hole-punch")
        self.assertTrue(result["remote"].startswith(f"[{b.address6}]:"), result)
        self.assertTrue(result["other"]["remote"].startswith(f"[{a.address6}]:"), result)

    def test_dual_stack_symmetric_nats_connect_over_ipv6(self) -> None:
        """IPv4: symmetric-random NATs both sides (a relay cell in docs/nat-matrix.md);
        IPv6: stateful firewalls. The connection goes over IPv6, directly, and the
        firewalls did drop the checks that came before the other side's."""
        a = self.lab.add_host("a", "symmetric-random", v6="v6-firewall")
        b = self.lab.add_host("b", "symmetric-random", v6="v6-firewall")
        servers = self.servers()
        result = self.connect(a, b, servers.url)
        self.assert_v6_punch(result, a, b)
        self.assertGreater(a.ipv6_dropped() + b.ipv6_dropped(), 0)

    def test_public_style_stun_servers(self) -> None:
        """Two one-address IPv4 STUN servers given with --stun-server, no hints in
        welcome (public-style), as users of public servers have: IPv6 carries too."""
        a = self.lab.add_host("a", "symmetric-random", v6="v6-firewall")
        b = self.lab.add_host("b", "symmetric-random", v6="v6-firewall")
        servers = start_lab_servers(self.lab, "public-style")
        stun = tuple(arg for server in servers.stun_servers for arg in ("--stun-server", server))
        self.assert_v6_punch(self.connect(a, b, servers.url, stun), a, b)

    def test_v4_udp_blocked_v6_connects(self) -> None:
        """IPv4 UDP blocked on both routers: IPv6 carries, no TCP or relay needed."""
        a = self.lab.add_host("a", "udp-blocked", v6="v6-firewall")
        b = self.lab.add_host("b", "udp-blocked", v6="v6-firewall")
        servers = self.servers()
        self.assert_v6_punch(self.connect(a, b, servers.url), a, b)

    def test_v6_only_hosts(self) -> None:
        """No IPv4 at all: signaling, STUN hints and the connection over IPv6."""
        a = self.lab.add_host("a", None, v6="v6-firewall")
        b = self.lab.add_host("b", None, v6="v6-firewall")
        self.servers()
        url = f"ws://{host_port(PUBLIC_A6, SIGNALING_PORT)}/"
        self.assert_v6_punch(self.connect(a, b, url), a, b)

    def test_v6_udp_blocked_tcp_punch_over_v6(self) -> None:
        """IPv6-only hosts whose routers also drop UDP: the TCP track learns its IPv6
        mapping by STUN over TCP and the two sides punch TCP through their firewalls."""
        a = self.lab.add_host("a", None, v6="v6-firewall")
        b = self.lab.add_host("b", None, v6="v6-firewall")
        for host in (a, b):
            host.router_nft(["insert", "rule", "ip6", "lab_filter6", "forward",
                             "meta", "l4proto", "udp", "drop"])  # fmt: skip
        self.servers()
        url = f"ws://{host_port(PUBLIC_A6, SIGNALING_PORT)}/"
        result = self.connect(a, b, url)
        assert b.address6 is not None
        self.assertEqual((result["method"], result["other"]["method"]), ("tcp-hole-punch",) * 2)
        self.assertTrue(result["remote"].startswith(f"[{b.address6}]:"), result)

    def test_v4_only_and_v6_only_through_a_relay(self) -> None:
        """A v4-only host (port-restricted NAT) and a v6-only host (firewall) have no
        family in common: coturn relays between the families. Each client asks its
        TURN server for both families; the v4 client's IPv6 relayed address reaches the
        v6 host, and the other way round."""
        v4 = self.lab.add_host("v4", "port-restricted")
        v6 = self.lab.add_host("v6", None, v6="v6-firewall")
        servers = self.servers(turn=True)
        coturn = servers.coturn
        assert coturn is not None and coturn.address6 is not None
        url4 = f"ws://{self.lab.public.address}:{SIGNALING_PORT}/"
        url6 = f"ws://{host_port(PUBLIC_A6, SIGNALING_PORT)}/"
        turn4 = f"turn:u:p@{coturn.address}:{coturn.port}"
        turn6 = f"turn:u:p@{host_port(coturn.address6, coturn.port)}"
        result = run_connect(
            v4, v6, url4, names=("v4", "v6"), timeout=TIMEOUT, stun_servers=(),
            extra_args=("--turn-server", turn4),
            answerer_url=url6, answerer_args=("--turn-server", turn6),
        )  # fmt: skip
        self.assertTrue(result["ok"], result.get("reason"))
        self.assertEqual(result["method"], "turn-relay")
        self.assertEqual(result["other"]["method"], "turn-relay")
