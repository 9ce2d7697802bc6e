"""A run's or a study's directory: the one place that knows the layout on disk.

    DIR/.lock           held (fcntl.flock) by the one process using DIR; holds its pid
    DIR/config.json     what the directory holds: the config, and the identity a rerun must match
    DIR/metrics.csv     a run: one row per epoch, for people
    DIR/metrics.jsonl   a run: the same rows as JSON, for programs
    DIR/checkpoints/    a run: Orbax steps (see jaxprune.checkpoint)
    DIR/results.csv     a study: one row per epoch of every phase

Files are replaced atomically (written beside, then renamed), and readers of
append-only logs tolerate a last line cut short by a kill.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import glob
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import jaxprune
from jaxprune.training import config as config_lib
from jaxprune.runtime import hosts
from jaxprune.runtime.errors import UserError

LOCK, CONFIG = ".lock", "config.json"
# val_loss and val_acc are empty unless the run holds out a validation split.
METRIC_FIELDS = (
    "epoch", "step", "lr", "sparsity",
    "params_nz", "flops_nz",  # non-zero parameters, multiply-adds per image left by the masks (models.cost)
    "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc",
    "seconds", "images_per_s",
)
# The fields that measure time, not results: they differ between equal runs.
TIMING_FIELDS = ("seconds", "images_per_s")


class RunDirError(UserError):
    """A directory in use by another process, or holding a different run."""


# ---------------------------------------------------------------- one process per directory


@contextlib.contextmanager
def locked(directory: str | os.PathLike) -> Iterator[Path]:
    """Holds an exclusive lock on `directory` (created if missing) while the block runs.

    The lock is fcntl.flock on DIR/.lock, so the OS releases it when the
    process dies however it dies. A second holder is refused at once with
    RunDirError naming the first one's pid; it writes nothing.

    In a multi-process job process 0 holds the lock for the job, and every
    process learns whether it got it (the others raise too).
    """
    directory = Path(directory)
    if not hosts.primary():
        if not hosts.agree(False):
            raise RunDirError(f"{directory}: process 0 could not take this directory (see its error)")
        yield directory
        return
    fd = None
    created = False  # the lock file is ours to remove if the directory is then refused
    try:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            created = not (directory / LOCK).exists()
            fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            hosts.agree(False)
            if fd is None:  # a file in the way, a read-only or missing parent, /proc...
                raise RunDirError(
                    f"cannot use {directory} as a directory ({e.strerror or e}); give a writable --workdir"
                ) from None
            if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):  # e.g. Lustre mounted without flock
                raise RunDirError(
                    f"the file system of {directory} refuses locks ({e.strerror or e}); mount it with locking "
                    "(Lustre: -o flock; NFS: lockd running) or use another --workdir"
                ) from None
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(
                f"{directory} is in use by another jaxprune process (pid {holder}); wait for it "
                "to end or stop it (a rerun resumes), or use another --workdir"
            ) from None
        hosts.agree(True)
        before = os.pread(fd, 4096, 0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield directory
        except RunDirError:  # a directory refused (someone else's): leave it as it was
            if created:
                os.unlink(directory / LOCK)
            else:
                os.ftruncate(fd, 0)
                os.pwrite(fd, before, 0)
            raise
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


# ---------------------------------------------------------------- files


def write_atomic(path: Path, text: str) -> None:
    """Replaces `path` with `text`: a reader or a crash sees the old file or the new, never half.
    Process 0 alone writes (every file here is the job's, not a process's)."""
    if not hosts.primary():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of an append-only JSON-lines log; a last line cut by a kill is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # only the last line can be torn: appends are sequential
    return rows


def csv_text(fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def append_csv_row(path: Path, fields: Sequence[str], row: dict[str, Any]) -> None:
    if not hosts.primary():
        return
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n").writerow(row)


# ---------------------------------------------------------------- what a directory holds


def read_record(directory: Path) -> dict[str, Any] | None:
    """DIR/config.json, or None when there is none; RunDirError when it is not jaxprune's."""
    path = Path(directory) / CONFIG
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} cannot be read ({e}); restore it, or use another --workdir") from None
    if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
        raise RunDirError(f"{path} is not a jaxprune run's or study's config; use another --workdir")
    return record


def _held_identity(saved: dict[str, Any], cls) -> dict[str, Any]:
    """A saved record's identity as today's release reads it: fields added since it was
    saved read as their defaults (through JSON, so tuples compare equal to lists)."""
    held = dict(saved["identity"])
    if isinstance(held.get("config"), dict):
        held["config"] = json.loads(json.dumps(config_lib.saved_identity(cls, held["config"])))
    return held


def holds_same(directory: Path, cfg, *, study: bool) -> bool:
    """Whether `directory` holds a run (or study) with cfg's identity, read as `claim` reads it."""
    try:
        saved = read_record(directory)
    except RunDirError:
        return False
    if saved is None or ("phases" in saved) != study or not isinstance(saved["identity"].get("config"), dict):
        return False
    return _held_identity(saved, type(cfg))["config"] == json.loads(json.dumps(config_lib.identity(cfg)))


def default_directory(parent: Path, stem: str, cfg, *, study: bool, legacy_stems: tuple[str, ...] = ()) -> Path:
    """PARENT/STEM-<identity hash>, or the directory an earlier release named for the same
    run: its hash then covered every field, so a field added since changed the name, and
    its stem may be one of `legacy_stems` (names before the model was part of them)."""
    path = Path(parent) / f"{stem}-{config_lib.identity_hash(cfg)}"
    if not path.exists() and Path(parent).is_dir():
        for s in (stem, *legacy_stems):
            for old in sorted(Path(parent).glob(f"{glob.escape(s)}-" + "[0-9a-f]" * 6)):
                if old.is_dir() and holds_same(old, cfg, study=study):
                    return old
    return path


def _short(text: str, n: int = 100) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def claim(directory: Path, cfg, extra: dict | None = None, *, record_extra: dict | None = None) -> None:
    """Writes config.json, or checks that the one there describes the same run (else RunDirError).

    The identity is the config's result-changing fields plus `extra` (for a
    study's phase: what it is and where it comes from). `record_extra` is
    saved beside it without being compared.
    """
    # Through JSON, so tuples compare equal to the lists read back.
    current = json.loads(json.dumps({"config": config_lib.identity(cfg), **(extra or {})}))
    saved = read_record(directory)
    study = record_extra is not None and "phases" in record_extra
    if saved is not None:
        if ("phases" in saved) != study:
            held, wanted = ("a study", "a training run") if "phases" in saved else ("a training run", "a study")
            raise RunDirError(f"{directory} holds {held}, not {wanted}; use another --workdir")
        diffs = config_lib.differences(_held_identity(saved, type(cfg)), current)
        if diffs:
            raise RunDirError(
                f"{directory} holds a different run ({'; '.join(_short(d) for d in diffs[:3])}); "
                "use another --workdir or the same settings"
            )
        return
    # config.json is written before anything else, so a directory with other
    # contents and none is someone else's (or had it deleted): training there
    # would set its files aside or overwrite them.
    others = sorted(p.name for p in Path(directory).iterdir() if p.name not in (LOCK, CONFIG + ".tmp"))
    if others:
        raise RunDirError(
            f"{directory} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) and has no "
            f"{CONFIG}, so it is not a jaxprune run's; use a new or empty --workdir"
        )
    record = {
        "config": config_lib.to_dict(cfg), "identity": current, **(record_extra or {}),
        "jaxprune_version": jaxprune.__version__,
    }
    write_atomic(Path(directory) / CONFIG, json.dumps(record, indent=2))


# ---------------------------------------------------------------- a run's metric logs


def write_metric_logs(directory: Path, history: list[dict[str, Any]]) -> None:
    """Rewrites metrics.csv and metrics.jsonl from the history (the checkpoint's, after a resume)."""
    write_atomic(directory / "metrics.csv", csv_text(METRIC_FIELDS, history))
    write_atomic(directory / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def append_metric_logs(directory: Path, row: dict[str, Any]) -> None:
    if not hosts.primary():
        return
    append_csv_row(directory / "metrics.csv", METRIC_FIELDS, row)
    with open(directory / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(directory) / "metrics.jsonl")


def check_data(directory: Path, fingerprint: str) -> None:
    """Records the run's data fingerprint in config.json, or refuses (RunDirError) a
    resume on other data. Directories from releases that did not record one take it now."""
    record = read_record(Path(directory))
    if record is None:
        return
    saved = record.get("data_fingerprint")
    if saved is None:
        write_atomic(Path(directory) / CONFIG, json.dumps({**record, "data_fingerprint": fingerprint}, indent=2))
    elif saved != fingerprint:
        raise RunDirError(
            f"{directory} was trained on other data ({saved}; now {fingerprint}): give the data it "
            "trained on, or another --workdir"
        )
