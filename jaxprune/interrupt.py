"""Stopping at a safe point on SIGTERM (preemption) or SIGINT (Ctrl-C).

Inside `stop_at_safe_points()`, either signal only *requests* a stop: the
training loop finishes the epoch in flight, saves it, waits for the
checkpoint writes, then raises `Interrupted`, which the command line turns
into one line and exit status 128 + signal (143 for SIGTERM, 130 for
SIGINT). A second Ctrl-C aborts at once (KeyboardInterrupt); what was saved
before it still resumes.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

_requested: int | None = None


class Interrupted(Exception):
    """Training stopped at a safe point because a signal asked it to."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested


def check() -> None:
    """Raises Interrupted if a stop was requested."""
    if _requested is not None:
        raise Interrupted(_requested)


def _handler(signum, frame):
    global _requested
    if _requested is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # the second Ctrl-C: stop now
    _requested = signum
    print(
        f"jaxprune: {signal.Signals(signum).name} received; stopping after the epoch in flight is saved"
        + (" (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""),
        file=sys.stderr,
        flush=True,
    )


@contextlib.contextmanager
def stop_at_safe_points() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT request a stop instead of killing.

    Handlers can only be installed from the main thread; elsewhere the block
    runs with the signals' usual behaviour.
    """
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = None
    old = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _requested = None
