"""Signals at every moment: while starting, during report and export, and the second Ctrl-C.

SIGTERM during report and export lands on an event (jaxprune.faults: one of
their files written), so it lands mid-write on any machine.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxprune import cli

MAIN = [sys.executable, "-m", "jaxprune"]  # what the `jaxprune` command runs
DATA = ["--data", "synthetic:256,64", "--no-progress"]


@pytest.mark.slow
def test_sigint_half_a_second_after_a_study_starts_exits_130_in_one_line(tmp_path):
    w = tmp_path / "study"
    proc = subprocess.Popen([*MAIN, "study", "--preset", "tiny", *DATA, "--workdir", str(w)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err
    lines = err.strip().splitlines()
    assert len(lines) <= 2 and "SIGINT" in lines[0], err
    if "while starting" in lines[0]:  # JAX was still importing: nothing written
        assert not w.exists()


def _study(tmp_path, small_study):
    """A copy of the session's small study (conftest.SMALL_STUDY), for this test to change."""
    import shutil

    return Path(shutil.copytree(small_study, tmp_path / "study"))


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_sigterm_during_report_and_export_exits_143_and_leaves_the_previous_outputs(tmp_path, small_study):
    w = _study(tmp_path, small_study)
    assert cli.main(["report", str(w)]) == 0
    report = _files(w / "report")
    out = tmp_path / "export"
    phase = w / "oneshot-magnitude-0.50" / "round-01"
    assert cli.main(["export", str(phase), str(out)]) == 0
    exported = _files(out)
    for event, command, folder, before in [("report-file", ["report", str(w)], w / "report", report),
                                           ("export-file", ["export", str(phase), str(out)], out, exported)]:
        env = {**os.environ, "JAXPRUNE_FAULT": f"{event}:1:term"}
        result = subprocess.run([*MAIN, *command], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 143, result.stderr[-3000:]
        err = result.stderr.strip().splitlines()
        assert len(err) == 1 and "stopped by SIGTERM" in err[0] and "left as it was" in err[0], err
        assert _files(folder) == before  # byte for byte
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


@pytest.mark.slow
def test_report_out_refuses_a_folder_it_did_not_make_and_drops_stale_files(tmp_path, small_study, capsys):
    w = _study(tmp_path, small_study)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert cli.main(["report", str(w), "--out", str(theirs)]) == 2
    assert "holds files the report did not make" in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    ours = tmp_path / "ours"
    assert cli.main(["report", str(w), "--out", str(ours)]) == 0
    (ours / "figure9_from_an_old_plan.png").write_bytes(b"old")
    assert cli.main(["report", str(w), "--out", str(ours)]) == 0  # its own folder: replaced whole
    assert not (ours / "figure9_from_an_old_plan.png").exists() and (ours / "report.md").is_file()


@pytest.mark.slow
def test_an_export_killed_between_its_renames_is_put_back_by_the_next(tmp_path, small_study):
    import shutil

    w = _study(tmp_path, small_study)
    phase = w / "oneshot-magnitude-0.50" / "round-01"
    out = tmp_path / "export"
    assert cli.main(["export", str(phase), str(out)]) == 0
    previous = _files(out)
    # As a SIGKILL leaves it: the old export moved aside, a new one half-written, OUT_DIR gone.
    shutil.move(out, tmp_path / ".export.export-aaaa-old")
    (tmp_path / ".export.export-bbbb").mkdir()
    (tmp_path / ".export.export-bbbb" / "model.safetensors").write_bytes(b"half")
    assert cli.main(["export", str(phase), str(out), "--which", "latest"]) == 0
    assert _files(out).keys() == previous.keys()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]


@pytest.mark.slow
def test_a_reader_that_leaves_early_ends_the_output_quietly(tmp_path, small_study):
    # `jaxprune report DIR | head -0`: the pipe's reader is gone before the first line.
    w = _study(tmp_path, small_study)
    proc = subprocess.Popen([*MAIN, "report", str(w)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""
    assert (w / "report" / "report.md").is_file()  # the work was done; only the listing was cut


def _events(monkeypatch, command, event) -> int:
    """How many times `command` (in this process) reaches `event`."""
    from jaxprune.runtime import faults

    monkeypatch.setenv("JAXPRUNE_FAULT", f"{event}:1000000:term")
    monkeypatch.setattr(faults, "_counts", {})
    assert cli.main(command) == 0
    return faults._counts.get(event, 0)


def _stopped_at(monkeypatch, capfd, command, spec) -> tuple[int, str]:
    from jaxprune.runtime import faults

    monkeypatch.setenv("JAXPRUNE_FAULT", spec)
    monkeypatch.setattr(faults, "_counts", {})
    capfd.readouterr()
    code = cli.main(command)
    return code, capfd.readouterr().err


@pytest.mark.slow
def test_report_export_and_evaluate_stop_at_every_event_in_one_line(tmp_path, small_study, monkeypatch, capfd):
    # SIGTERM or SIGINT after each file the report or export writes (and after evaluate's
    # restore), in this process: exit 128 + signal, one line, the previous outputs byte for
    # byte, nothing left beside them.
    w = _study(tmp_path, small_study)
    phase = w / "oneshot-magnitude-0.50" / "round-01"
    out = tmp_path / "export"
    cases = [("report-file", ["report", str(w)], w / "report"), ("export-file", ["export", str(phase), str(out)], out),
             ("evaluate-restored", ["evaluate", str(phase)], None)]
    for event, command, folder in cases:
        n = _events(monkeypatch, command, event)
        assert n >= {"report-file": 10, "export-file": 3, "evaluate-restored": 1}[event], (event, n)
        before = _files(folder) if folder else None
        for k in range(1, n + 1):
            how, code = ("int", 130) if k % 2 else ("term", 143)
            got, err = _stopped_at(monkeypatch, capfd, command, f"{event}:{k}:{how}")
            assert got == code, (event, k, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "stopped by SIG" in lines[0] and "left as it was" in lines[0], (event, k, err)
            if folder:
                assert _files(folder) == before, (event, k)
                assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


@pytest.mark.slow
def test_a_stop_that_lands_in_a_gc_callback_still_stops_the_report(tmp_path, small_study):
    # Python prints an exception raised in a garbage-collector callback ("Exception ignored")
    # and carries on: seen as a report that went on writing after SIGTERM and exited 0.
    # (In a process of its own: pytest's own hook would see the exception first.)
    w = _study(tmp_path, small_study)
    assert cli.main(["report", str(w)]) == 0
    before = _files(w / "report")
    script = f"""
import gc, os, signal, sys
from jaxprune import cli
from jaxprune.report import report
fired = []
def in_gc(phase, info):
    if fired:
        return
    fired.append(phase)
    os.kill(os.getpid(), signal.SIGTERM)
    sum(i for i in range(1000))  # Python code after it: the handler runs here, inside the callback
real = report.tables
def armed(*a, **k):
    gc.callbacks.append(in_gc)
    gc.collect()
    return real(*a, **k)
report.tables = armed
sys.exit(cli.main(["report", {str(w)!r}]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stderr[-3000:]
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0], result.stderr
    assert _files(w / "report") == before


def test_a_stop_a_library_wrapped_in_its_own_error_is_still_the_stop(monkeypatch, capsys):
    # Orbax turns any error of a read, the stop's included, into `Exception`: that
    # reported "cannot be restored" and exit 2 (a user's mistake) for a SIGTERM.
    def wrapped(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException as e:
            raise Exception("Encountered error while reading array index") from e
        return 0

    monkeypatch.setitem(cli.COMMANDS, "export", wrapped)
    assert cli.main(["export", "somewhere", "else"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped by SIGTERM" in err[0]
