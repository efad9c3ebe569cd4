"""Integration tests: real sockets on 127.0.0.1, subprocesses, coturn, aioice, the daemon,
the wheel build."""
