"""The handle an ``on(event, callback)`` returns: ``P2PCoordinator.on`` and
``SignalingClient.on`` both give one."""

from __future__ import annotations

from typing import Generic, TypeVar

C = TypeVar("C")


class Subscription(Generic[C]):
    """What ``on(event, callback)`` returns; :meth:`cancel` (or calling it) unsubscribes."""

    def __init__(self, callbacks: list[C], callback: C) -> None:
        self._callbacks = callbacks
        self._callback = callback

    def cancel(self) -> None:
        """Stop delivering events to the callback (idempotent)."""
        if self._callback in self._callbacks:
            self._callbacks.remove(self._callback)

    __call__ = cancel


__all__ = ["Subscription"]
