"""Ctrl-C and SIGTERM that wait for a safe point.

Training updates the weights, the optimiser and the position in the epoch together; an
interrupt landing between two of those updates would save a state no uninterrupted run ever
had. :class:`InterruptGuard` lets the trainer mark such a stretch as critical: a signal that
arrives inside it is held and raised when the stretch ends, at a step boundary. Outside
critical stretches an interrupt is raised at once, as usual.

SIGTERM (a scheduler stopping a job, ``kill``) is raised as :class:`Terminated`, a
KeyboardInterrupt, so that every ``finally`` runs (temporaries are removed, a resumable
checkpoint is written) instead of the process vanishing mid-write.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM); handled like Ctrl-C."""


_EXCEPTIONS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}


class InterruptGuard:
    """While entered, Ctrl-C and SIGTERM inside :meth:`critical` stretches wait for their end.

    Signal handlers can only be installed from the main thread; elsewhere the guard does
    nothing (and Python delivers no signal to that thread anyway).
    """

    def __init__(self) -> None:
        self._depth = 0
        self._pending: type[KeyboardInterrupt] | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in _EXCEPTIONS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        exception = _EXCEPTIONS[signum]
        if self._depth:
            self._pending = self._pending or exception
            return
        raise exception()

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A stretch that must finish once begun; an interrupt during it is raised when it ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._pending is not None and not self._depth:  # reached only when the stretch finished
            exception, self._pending = self._pending, None
            raise exception()


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration (a command line's whole run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
