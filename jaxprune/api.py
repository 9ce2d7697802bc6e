"""The Python entry point of a whole study, as `jaxprune study` runs it: plan, phases,
resume, then the report; `jaxprune study` calls it too."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from jaxprune.study import config as config_lib
from jaxprune.runtime import hosts
from jaxprune.study import driver as study


def run_study(cfg: config_lib.StudyConfig, workdir: str | Path, *, report: bool = True,
              log: Callable[[str], None] = print) -> Path:
    """Runs (or resumes, or grows) the study `cfg` in `workdir`; returns results.csv's path.

    The entry point for a study of your own model or data: register them first
    (`jaxprune.models.register`; `jaxprune.data.register_arrays` for in-memory
    arrays, `register_source` for a loader) and name them in ``cfg.train``
    (``model=``, ``data=``). Rerunning with the same `workdir` resumes; a `cfg`
    that covers more (targets, methods, schedules) trains only what is new.
    With `report`, WORKDIR/report/ is written too, when pandas and scipy are
    installed (else a line on stderr says how to write it later). Diverged
    phases are marked in results.csv (`jaxprune.study.casualties` lists them).
    A user's mistake raises a `jaxprune.errors.UserError` with a one-line message.
    In a multi-host job only process 0 logs and writes the report.
    """
    primary = hosts.primary()
    results = study.run_study(cfg, workdir, log=log if primary else lambda _: None)
    if report and primary:
        try:  # pandas and scipy, imported only now: a machine without them still trains
            from jaxprune.report import report as report_lib
        except ImportError as e:
            print(f"jaxprune study: report skipped ({e}); install pandas and scipy, then run "
                  f"`jaxprune report {workdir}`", file=sys.stderr)
        else:
            log(f"report: {report_lib.write_report(workdir)}")
    return results
