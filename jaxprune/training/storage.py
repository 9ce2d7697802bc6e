"""Checkpoint storage failures, each reported in one line: `WriteError` (a full disk
or quota, a read-only mount, an I/O error) and `storage_cause`, which tells such a
failure from a bug; `warn`, the one-line report; and the hooks that quiet Orbax's
and TensorStore's tracebacks about a failed write or a damaged step's abandoned
reads (`install_quiet_hooks`, for the command line).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import warnings


class WriteError(Exception):
    """A checkpoint could not be written (full disk or quota, read-only mount, I/O
    error). Nothing was deleted; the message is one line naming the folder and cause."""


# The errors that mean "this storage cannot take the write", not a bug.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM)


def storage_cause(e: BaseException) -> str | None:
    """'No space left on device' and the like, if `e` (or what caused it) is a storage
    failure: an OSError, or TensorStore's error text with its os_error_code."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return os.strerror(e.errno)
        code = re.search(r"os_error_code='(\d+)'", str(e))
        if code and int(code.group(1)) in STORAGE_ERRNOS:
            return os.strerror(int(code.group(1)))
        e = e.__cause__ or e.__context__
    return None


def warn(message: str) -> None:
    print(f"jaxprune: {message}", file=sys.stderr)


def _raised_from(exc, kind: type = GeneratorExit, _orbax: str = f"{os.sep}orbax{os.sep}") -> tuple[bool, bool]:
    """(whether `exc` or an exception it was raised from is a `kind`, whether any of
    them passed through Orbax's code). Builtins only, as the hooks below may run
    while the interpreter shuts down and module globals are gone."""
    is_kind = in_orbax = False
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        is_kind = is_kind or isinstance(exc, kind)
        tb = exc.__traceback__
        while tb is not None and not in_orbax:
            in_orbax = _orbax in tb.tb_frame.f_code.co_filename
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return is_kind, in_orbax


def _quiet_closed_loop(report, _default=sys.unraisablehook, _raised_from=_raised_from) -> None:
    """Drops the 'Event loop is closed' errors that TensorStore's callbacks raise
    after Orbax gives up reading a damaged step (~160 tracebacks, which would bury
    the one line saying it was set aside); anything else is reported as before.

    Also the reads it abandoned then: Orbax closes its event loop at the first
    failed read without cancelling the others, and each read still waiting for
    TensorStore is left suspended. When the garbage collector closes it, Orbax's
    `except BaseException` turns the GeneratorExit into an 'Encountered error
    while reading array index' Exception, printed as 'Exception ignored in:
    <coroutine object _read_array_index_and_device_put>' and a traceback: as many
    as ~160, or none, depending on how many reads were still in flight."""
    if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed":
        return
    if getattr(report.object, "cr_code", None) is not None and _raised_from(report.exc_value) == (True, True):
        return  # an Orbax coroutine, closed while suspended
    _default(report)


class _QuietFailedReads(logging.Filter):
    """Drops asyncio's 'Task/Future/_GatheringFuture exception was never retrieved' for
    Orbax's reads of a damaged step: the error is already reported once, as the step is
    set aside. (Reads that fail just as Orbax closes its event loop, the first failure
    already raised, have no one to retrieve their errors: none or several of them.)"""

    def filter(self, record: logging.LogRecord, _raised_from=_raised_from) -> bool:
        text = record.getMessage()
        if not text.split("\n", 1)[0].endswith(" exception was never retrieved"):
            return True
        in_orbax = bool(record.exc_info) and _raised_from(record.exc_info[1])[1]
        return not (in_orbax or any(w in text for w in ("async_deserialize", "DATA_LOSS", "OCDBT")))


class _QuietOrbax(logging.Filter):
    """Drops Orbax's own warnings and errors (absl): each failed write logs several
    tracebacks from its threads, and a read of a damaged step more; jaxprune
    reports every such failure itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}" not in record.pathname


def install_quiet_hooks() -> None:
    """For the command line: one line per failure instead of Orbax's and TensorStore's tracebacks."""
    if sys.unraisablehook is not _quiet_closed_loop:
        sys.unraisablehook = _quiet_closed_loop
    for name, f in (("asyncio", _QuietFailedReads()), ("absl", _QuietOrbax())):
        logger = logging.getLogger(name)
        if not any(type(x) is type(f) for x in logger.filters):
            logger.addFilter(f)
    # Orbax's abandoned reads of such a step; jaxprune itself has no coroutines.
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
