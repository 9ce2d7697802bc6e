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

A signal's exception can land where Python cannot raise it: in a garbage
collector callback or a `__del__`, which print it as "Exception ignored" and
carry on. While a mode is active, such an exception is delivered again (the
signal re-sent), so it is raised in the program's own code; and once a stop is
requested, the unraisable reports it causes (abandoned reads) are not printed.
Libraries may also wrap it in an ordinary exception (Orbax turns any error of a
read into `Exception`): the command line treats any error raised after a stop
was requested in "at once" mode as that stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REDELIVER_S = 0.05  # a swallowed stop is raised again this much later (see the module docstring)

_requested: int | None = None
_mode: str | None = None  # None (not ours), "starting", "safe", "now"


class Interrupted(BaseException):
    """The command stopped because a signal asked it to.

    A BaseException, as KeyboardInterrupt is: raised wherever the program is
    (`stop_at_once`), it must not be caught by a library's or our own
    ``except Exception`` (which would carry on writing, exit 0, or report a
    signal as a user's mistake)."""

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


def _unraisable_hook(previous):
    """sys.unraisablehook while a mode is active (see the module docstring)."""

    def hook(report) -> None:
        e = report.exc_value
        if isinstance(e, (Interrupted, KeyboardInterrupt)) and _mode is not None:
            # Sent again a moment later, from a timer thread, so that the handler runs
            # once this hook has returned (sent from here, it would run inside it).
            signum = e.signum if isinstance(e, Interrupted) else (_requested or signal.SIGINT)
            timer = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        if _requested is not None:
            return  # what the stop abandoned (e.g. a checkpoint read's coroutines)
        previous(report)

    return hook


class _AfterStop(logging.Filter):
    """Drops log records once a stop is requested: asyncio's 'Task was destroyed but it is
    pending' and the like, about the reads the stop abandoned."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _requested is None


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
    old_hook, sys.unraisablehook = sys.unraisablehook, _unraisable_hook(sys.unraisablehook)
    quiet = _AfterStop()
    logging.getLogger("asyncio").addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger("asyncio").removeFilter(quiet)
        for s, h in handlers.items():
            signal.signal(s, h)
        _mode, _requested = old_mode, old_requested
        sys.unraisablehook = old_hook


def stop_at_safe_points() -> contextlib.AbstractContextManager:
    """Within the block, SIGTERM and SIGINT request a stop at the next safe point."""
    return _scope("safe")


def stop_at_once() -> contextlib.AbstractContextManager:
    """Within the block, SIGTERM and SIGINT raise Interrupted where the program is."""
    return _scope("now")
