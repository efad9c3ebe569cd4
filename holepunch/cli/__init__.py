# -*- test-case-name: tests.unit.test_signaling_client,tests.integration.test_connect_cli -*-
"""The ``holepunch`` command line.

Each subcommand lives in a module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; this module only dispatches. To add a subcommand, add one line to
``COMMANDS``. A module with several subcommands is named ``module:NAME`` and provides
``add_NAME_arguments(parser)`` and ``run_NAME(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "nat-check": ("holepunch.cli.natcheck", "discover the NAT you are behind (RFC 5780)"),
    "token": ("holepunch.cli.token", "mint a signaling auth token"),
    "connect": (
        "holepunch.cli.connect",
        "reach a peer through NATs and carry an encrypted byte stream (like nc)",
    ),
    "send": ("holepunch.cli.transfer:send", "send a file to a peer through NATs, verified"),
    "receive": ("holepunch.cli.transfer:receive", "receive a file a peer sends"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand's options."""
    parser = argparse.ArgumentParser(
        prog="holepunch", description="NAT traversal for Twisted: diagnostics and tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module_name, _, part = module_name.partition(":")
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        if part:
            getattr(module, f"add_{part}_arguments")(command)
            command.set_defaults(command_module=module, command_run=getattr(module, f"run_{part}"))
        else:
            module.add_arguments(command)
            command.set_defaults(command_module=module, command_run=module.run)
    return parser


def react(main: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``main(reactor)`` on the reactor until it returns; return its exit status."""
    from twisted.internet import defer, task

    status = 1

    async def wrapper(reactor: Any) -> None:
        nonlocal status
        status = await main(reactor)

    try:
        task.react(lambda reactor: defer.ensureDeferred(wrapper(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return status


def _log_to_stderr(level_name: str) -> None:
    """With ``LOG_LEVEL`` set, log at that level and above to stderr (for diagnosis)."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    name = {"warning": "warn"}.get(level_name.lower(), level_name.lower())
    try:
        level = LogLevel.levelWithName(name)
    except Exception:
        sys.stderr.write(
            f"holepunch: LOG_LEVEL: expected debug, info, warn or error, got {level_name!r}\n"
        )
        raise SystemExit(2) from None
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``holepunch`` command; return its exit status.

    Commands are quiet but for their output and one-line errors; set ``LOG_LEVEL``
    (debug, info, warn, error) to see the library's log on stderr.
    """
    level = os.environ.get("LOG_LEVEL")
    if level:
        _log_to_stderr(level)
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    status: int = args.command_run(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
