# -*- test-case-name: tests.integration.test_workers -*-
"""One worker of ``twistd holepunch --workers N``, started by worker 0
(:class:`holepunch.daemon.workers.WorkerPool`); not meant to be run by hand.

``python -m holepunch.daemon.worker [twistd holepunch options] --worker-index I``
builds the same services as the daemon (:func:`holepunch.daemon.tap.makeService`),
logs to stdout (worker 0 puts the lines in its log), and stops on SIGTERM, SIGINT, or
when its stdin closes (worker 0 is gone).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from twisted.logger import FileLogObserver, formatEvent, globalLogBeginner
from twisted.python import usage


def _watch_parent(reactor: Any) -> None:
    """Stdin is a pipe from worker 0: its end means worker 0 is gone, so stop."""

    def wait() -> None:
        try:
            while os.read(0, 4096):  # the raw descriptor: no lock held at exit
                pass
        except OSError:
            pass
        reactor.callFromThread(lambda: reactor.running and reactor.stop())

    threading.Thread(target=wait, name="parent-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    from twisted.internet import reactor

    from holepunch.daemon.tap import Options, level_filter, makeService

    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        sys.stderr.write(f"holepunch worker: {e}\n")
        return 2

    def line(event: dict[str, Any]) -> str:
        namespace, level = event.get("log_namespace", "-"), event.get("log_level")
        text = formatEvent(event).replace("\n", "\n\t")
        return f"[{namespace}#{level.name if level else '-'}] {text}\n"

    globalLogBeginner.beginLoggingTo(
        [level_filter(FileLogObserver(sys.stdout, line), options.config.log_level)],
        redirectStandardIO=False,
    )
    service = makeService(options, reactor)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    _watch_parent(reactor)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
