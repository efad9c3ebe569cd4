"""What the lab tests that move files through ``holepunch connect`` share: the servers
as the README starts them (plus coturn), two random payloads, a transfer, its check."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.trial.unittest import TestCase

from lab.natlab import LabHost, NatLab, coturn_unavailable_reason, lab_fixture, unavailable_reason
from lab.peers import LabServers, random_file, start_lab_servers, transfer_pair


class TransferLabCase(TestCase):
    """A lab with the daemon on one address (its defaults) and coturn; ``size`` random
    bytes each way per transfer."""

    size = 32 * 1024 * 1024
    lab: NatLab
    servers: LabServers
    payloads: tuple[tuple[str, str], tuple[str, str]]

    def start_lab(self, coturn_args: Sequence[str] = ()) -> LabServers:
        """Skip without root, nft or coturn; else build the lab, its servers and the
        payloads (all removed by the cleanups)."""
        reason = unavailable_reason() or coturn_unavailable_reason()
        if reason:
            raise self.skipTest(reason)
        self.lab = lab_fixture(self)
        self.payloads = (random_file(self.size), random_file(self.size))
        for path, _ in self.payloads:
            self.addCleanup(os.unlink, path)
        self.servers = start_lab_servers(
            self.lab, "one-address", turn=True, coturn_args=coturn_args
        )
        return self.servers

    def transfer(self, a: LabHost, b: LabHost, **kwargs: Any) -> dict[str, Any]:
        """:func:`lab.peers.transfer_pair` of the payloads from ``a`` (offering) to ``b``;
        ``extra_args`` add to the TURN servers' options."""
        extra = [*self.servers.turn_args(), *kwargs.pop("extra_args", [])]
        return transfer_pair(
            a,
            b,
            self.servers.url,
            names=(a.name, b.name),
            size=self.size,
            stun_servers=self.servers.stun_servers,
            extra_args=extra,
            payloads=self.payloads,
            transfer_timeout=180,
            **kwargs,
        )

    def assertByteExact(self, result: dict[str, Any]) -> None:
        """Both sides exited 0 and both files arrived whole and unchanged."""
        shown = {k: v for k, v in result.items() if k not in ("events", "peers")}
        self.assertTrue(result["ok"], shown)
        self.assertEqual(result["byte_exact"], (True, True), shown)
        self.assertEqual(result["received"], (self.size, self.size), shown)
