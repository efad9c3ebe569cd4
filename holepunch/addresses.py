"""Textual IP addresses as the rest of the package passes them around: which version an
address is, how to write one with its port, and the IPv4 address behind an IPv4-mapped
one (what a dual-stack socket reports for an IPv4 peer)."""

from __future__ import annotations

import ipaddress


def ip_version(host: str) -> int:
    """4 or 6: the IP version of a textual address (``""`` is IPv4's any address; an
    IPv6 scope such as ``%eth0`` is ignored).

    :raises ValueError: ``host`` is not an IP address.
    """
    if not host:
        return 4
    return ipaddress.ip_address(host.split("%", 1)[0]).version


def format_address(address: tuple[str, int]) -> str:
    """``host:port``, with an IPv6 host in brackets (``[2001:db8::1]:3478``) as URLs
    (RFC 3986 3.2.2) and most tools write it."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, str]:
    """``host:port`` split as URLs write it: ``[2001:db8::1]:3478`` and ``[2001:db8::1]``
    (IPv6 in brackets), ``example.org:3478``, ``192.0.2.1``; a bare IPv6 address (more
    than one colon, no brackets) is all host. The port is ``""`` when there is none.

    :raises ValueError: an unterminated ``[``, or something other than ``:PORT`` after
        the ``]``.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 address in {text!r}")
        after = text[end + 1 :]
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after the host in {text!r}")
        return text[1:end], after[1:]
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def unmapped(host: str) -> str:
    """``::ffff:192.0.2.1`` (how a dual-stack socket reports an IPv4 peer) as
    ``192.0.2.1``; any other address unchanged."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host
