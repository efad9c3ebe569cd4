"""Breaking a running ``holepunch connect`` transfer in the lab, and timing its recovery.

:func:`disrupted_transfer` runs :func:`lab.peers.transfer_pair` at a fixed rate and, once
bytes flow both ways, does something to one side's router: ``flush`` (``conntrack -F``:
every NAT mapping gone), ``renumber`` (a new public address, :meth:`LabHost.change_public_address
<lab.natlab.LabHost.change_public_address>`) or ``unblock`` (the direct path was blocked by
an nft rule from the start, so the connection is relayed; the rule goes). The result says
whether both files arrived byte-exact, the longest stall of either direction after the
disruption (the recovery time: the wait from the disruption, or between two reads of the
peer's bytes, until bytes flow again) and the ``path-changed`` / ``ice-restart`` events.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lab.natlab import LabHost, NatLab
from lab.peers import LabServers, StreamPeer, transfer_pair

DISRUPTIONS = ("flush", "renumber", "unblock", "none")

BLOCK_TABLE = "lab_block"


def block_direct(router_of: LabHost, other: LabHost) -> None:
    """Drop UDP between ``router_of``'s host and ``other``'s public address on
    ``router_of``'s router (the relay still works: it is elsewhere)."""
    ruleset = (
        f"table inet {BLOCK_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority -10; policy accept;\n"
        f"    ip daddr {other.public_address} meta l4proto udp drop\n"
        f"    ip saddr {other.public_address} meta l4proto udp drop\n"
        "  }\n"
        "}\n"
    )
    router_of.router_nft(["-f", "-"], input=ruleset.encode())


def block_udp(router_of: LabHost) -> None:
    """Drop every UDP packet ``router_of``'s router forwards (as the ``udp-blocked``
    preset does, but removable by :func:`unblock_direct`): STUN, TURN over UDP and ICE
    checks all fail, so only TCP hole punching connects."""
    ruleset = (
        f"table inet {BLOCK_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority -10; policy accept;\n"
        "    meta l4proto udp drop\n"
        "  }\n"
        "}\n"
    )
    router_of.router_nft(["-f", "-"], input=ruleset.encode())


def unblock_direct(router_of: LabHost) -> None:
    """Remove :func:`block_direct`'s rule."""
    router_of.router_nft(["delete", "table", "inet", BLOCK_TABLE])


def disrupted_transfer(
    lab: NatLab,
    servers: LabServers,
    a: LabHost,
    b: LabHost,
    disruption: str,
    *,
    size: int = 6_000_000,
    rate: float = 500_000.0,
    after: float = 1.0,
    extra_args: Sequence[str] = (),
    payloads: tuple[tuple[str, str], tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """A transfer between ``a`` (offerer) and ``b``, with ``disruption`` done to ``a``'s
    router ``after`` seconds into the flow (see the module docstring). Adds to
    :func:`transfer_pair`'s result ``disrupted_at`` (``time.monotonic()``), ``stall``
    (seconds, the slower direction), ``path_changes`` and ``restarts`` (each side's)."""
    if disruption not in DISRUPTIONS:
        raise ValueError(f"disruption must be one of {DISRUPTIONS}")
    if disruption == "unblock":
        block_direct(a, b)
    moment: list[float] = []

    def disrupt(pa: StreamPeer, pb: StreamPeer) -> None:
        time.sleep(after)
        moment.append(time.monotonic())
        if disruption == "flush":
            a.flush_conntrack()
        elif disruption == "renumber":
            a.change_public_address()
        elif disruption == "unblock":
            unblock_direct(a)

    result = transfer_pair(
        a,
        b,
        servers.url,
        names=(a.name, b.name),
        size=size,
        rate=rate,
        stun_servers=servers.stun_servers,
        extra_args=[*servers.turn_args(), *extra_args],
        payloads=payloads,
        transfer_timeout=180,
        on_flowing=disrupt,
    )
    peers: tuple[StreamPeer, StreamPeer] | None = result.get("peers")
    result["disrupted_at"] = moment[0] if moment else None
    if moment and peers is not None:
        result["stall"] = max(p.longest_stall(moment[0]) for p in peers)
    events = result.get("events", ([], []))
    result["path_changes"] = tuple(
        [e for e in side if e.get("event") == "path-changed"] for side in events
    )
    result["restarts"] = tuple(
        [e for e in side if e.get("event") == "ice-restart"] for side in events
    )
    return result
