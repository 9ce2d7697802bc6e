"""SIGTERM (preemption) and SIGINT (Ctrl-C): what each moment of a command does with them.

Three modes, one handler:

- **starting** (`at_startup`, installed by the entry point before the heavy
  imports): nothing has been written yet, so the process leaves at once with
  one line and status 128 + signal (143 for SIGTERM, 130 for SIGINT).
- **safe points** (`stop_at_safe_points`, training): a signal only *requests*
  a stop: the loop finishes the epoch in flight, saves it, then raises
  `Interrupted`, which the command line turns into one line and 128 + signal.
  A second Ctrl-C (or SIGTERM) aborts at once (KeyboardInterrupt); what was
  saved before it still resumes. The first signal's line says so.
- **at once** (`stop_at_once`, report, export, data): `Interrupted` is raised
  where the program is; those commands write through temporary names, so the
  previous outputs stay whole.

Handlers can only be installed from the main thread; elsewhere every mode
leaves the signals' usual behaviour.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested: int | None = None
_mode: str | None = None  # None (not ours), "starting", "safe", "now"


class Interrupted(Exception):
    """The command stopped because a signal asked it to."""

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


def _say(text: str) -> None:
    try:
        print(f"jaxprune: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a closed or broken stderr must not stop the stop
        pass


def _handler(signum, frame):
    global _requested
    name = signal.Signals(signum).name
    if _mode == "starting":
        _say(f"{name} received while starting; nothing was written")
        os._exit(128 + signum)
    if _mode == "now":
        _requested = signum
        raise Interrupted(signum)
    if _requested is not None:
        raise KeyboardInterrupt  # the second signal: stop now
    _requested = signum
    _say(f"{name} received; stopping after the epoch in flight is saved (Ctrl-C again to stop at once)")


def _install() -> dict | None:
    if threading.current_thread() is not threading.main_thread():
        return None
    return {s: signal.signal(s, _handler) for s in SIGNALS}


def at_startup() -> None:
    """From now until a command's own mode: a signal exits at once (nothing is written yet).

    The entry point calls this before importing JAX, so Ctrl-C in the first
    seconds is one line, never a traceback or a signal lost inside JAX's imports.
    """
    global _mode
    if _install() is not None:
        _mode = "starting"


@contextlib.contextmanager
def _scope(mode: str) -> Iterator[None]:
    global _requested, _mode
    old_mode, old_requested = _mode, _requested
    handlers = _install()
    if handlers is None:
        yield
        return
    _mode, _requested = mode, None
    try:
        yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        _mode, _requested = old_mode, old_requested


def stop_at_safe_points() -> contextlib.AbstractContextManager:
    """Within the block, SIGTERM and SIGINT request a stop at the next safe point."""
    return _scope("safe")


def stop_at_once() -> contextlib.AbstractContextManager:
    """Within the block, SIGTERM and SIGINT raise Interrupted where the program is."""
    return _scope("now")
