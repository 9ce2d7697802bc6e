"""Deterministic fault injection at named events, for the fault tests.

The code calls ``fault_point(EVENT)`` where a fault matters (a checkpoint
write started or committed, a metrics or results row written). When the
environment variable ``JAXPRUNE_FAULT`` is ``EVENT:N[:ACTION]``, the N-th
occurrence of EVENT in this process performs ACTION:

- ``kill``: SIGKILL this process (a crash, a preemption without warning);
- ``term``: SIGTERM this process (a preemption with warning, a scheduler's stop);
- ``int``: SIGINT this process (Ctrl-C);
- ``fill``: fill the file system holding the path in ``JAXPRUNE_FAULT_PATH``
  (a file ``.jaxprune-fill`` there, written until ENOSPC), so the next write
  fails as on a full disk;
- ``kill-once``: SIGKILL this process unless the file ``JAXPRUNE_FAULT_PATH`` exists,
  which it creates first: a process started again (a retried Ray task) gets past it;
- ``pause``: wait until the file ``JAXPRUNE_FAULT_PATH`` exists (checked every
  20 ms), so a test can act while the process is held at a known point.

Faults land on events, not on timers, so a test lands the same faults on any
machine, fast or slow. Unset (users), a fault point costs a dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time

EVENTS = (
    "checkpoint-save-started",  # a checkpoint's write is under way (its temporary folder exists)
    "checkpoint-committed",  # a checkpoint's write has finished and been renamed into place
    "metrics-row",  # a run's metrics.csv/jsonl row was appended
    "results-row",  # a study's results.csv row was written
    "report-file",  # the report wrote one of its files (into its staging folder)
    "export-file",  # export wrote one of its files (into its staging folder)
    "evaluate-restored",  # evaluate restored a checkpoint (before computing anything)
    "data-file",  # `jaxprune data` finished one step of a fetch (a verified archive, each unpacked file)
)
FILL_NAME = ".jaxprune-fill"

_counts: dict[str, int] = {}


def _parse(text: str) -> tuple[str, int, str] | None:
    if not text:
        return None
    parts = text.split(":")
    event, n, action = parts[0], int(parts[1]) if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else "kill"
    if event not in EVENTS or action not in ("kill", "term", "int", "fill", "pause", "kill-once") or n < 1:
        raise ValueError(f"JAXPRUNE_FAULT={text!r}: want EVENT:N[:kill|term|int|fill|pause|kill-once] with EVENT one of {', '.join(EVENTS)}")
    return event, n, action


def fault_point(event: str) -> None:
    """Counts `event`; performs the injected fault if this is its occurrence."""
    spec = _parse(os.environ.get("JAXPRUNE_FAULT", ""))
    if spec is None or spec[0] != event:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] != spec[1]:
        return
    signals = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}
    if spec[2] in signals:
        os.kill(os.getpid(), signals[spec[2]])
    elif spec[2] == "kill-once":
        try:
            os.close(os.open(os.environ["JAXPRUNE_FAULT_PATH"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)
    elif spec[2] == "pause":
        while not os.path.exists(os.environ["JAXPRUNE_FAULT_PATH"]):
            time.sleep(0.02)
    else:
        fill(os.environ["JAXPRUNE_FAULT_PATH"])


def fill(folder: str | os.PathLike) -> int:
    """Writes ``folder/.jaxprune-fill`` until the file system is full; returns its bytes."""
    path = os.path.join(folder, FILL_NAME)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        block = b"\0" * (1 << 16)
        while True:
            try:
                written += os.write(fd, block)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return written
