"""Moved to :mod:`holepunch.punch.tcp`; this alias stays only until the lab tooling in
``holepunch/testing`` (moving to ``lab/``) imports the new path. Do not use it."""

from holepunch.punch.tcp import (
    PunchedStream,
    TcpMapping,
    TcpPunchError,
    simultaneous_open,
    sync_moment,
    tcp_mapping,
)

__all__ = [
    "PunchedStream",
    "TcpMapping",
    "TcpPunchError",
    "simultaneous_open",
    "sync_moment",
    "tcp_mapping",
]
