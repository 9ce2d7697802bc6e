"""Downloads, verifies and unpacks CIFAR-10's binary version for ``--data cifar10-bin:DIR``.

`fetch_cifar10` fetches the official archive over HTTP(S) (or takes a local
copy), checks its size, MD5 and SHA-256, and writes ``DIR/cifar-10-batches-bin/``
holding only the archive's known regular files. Everything is staged in a
hidden temporary folder next to the final one and moved into place by one
rename, so a failed or cut-off run leaves no partial DIR. Failures a user can
act on raise `data.DataError` with a one-line message that says what to do.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from jaxprune import data
from jaxprune.data import DataError

FOLDER = "cifar-10-batches-bin"
BIN_FILES = (*data.TRAIN_FILES, data.TEST_FILE)
# Every name the official archive holds; any other member is refused.
MEMBERS = frozenset(f"{FOLDER}/{name}" for name in (*BIN_FILES, "batches.meta.txt", "readme.html"))
CHUNK = 1 << 20  # bytes per read while downloading, hashing and extracting
TIMEOUT = 60.0  # seconds any one network operation may block
FALLBACK = "fetch the archive elsewhere and pass it with --from FILE, or use --data synthetic"
_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.DIRTYPE: "directory",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}


@dataclasses.dataclass(frozen=True)
class Archive:
    """Where an archive is published and exactly what it must be."""

    url: str
    size: int  # bytes
    md5: str  # lowercase hex
    sha256: str  # lowercase hex


CIFAR10 = Archive(
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    size=170_052_171,
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
)


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What `fetch_cifar10` left in place."""

    folder: Path  # the folder holding the .bin files
    written: bool  # False: valid data was already there and was left alone
    n_train: int  # training images
    n_test: int  # test images


def fetch_cifar10(
    directory: str | os.PathLike = data.DEFAULT_CIFAR10_DIR,
    *,
    source: str | os.PathLike | None = None,
    archive: Archive | None = None,
    progress: bool = True,
    timeout: float = TIMEOUT,
) -> Fetched:
    """Makes ``directory/cifar-10-batches-bin`` unless valid data is already there.

    source: a local copy of the archive to use instead of downloading it.
    archive: the URL, size and hashes to expect (None: the official `CIFAR10`).
    progress: show a progress bar on stderr while downloading or hashing.
    timeout: seconds any one network operation may block.
    """
    archive = archive or CIFAR10
    root = Path(directory).expanduser()
    present = data.cifar10_folder(root)
    if root.is_dir() and _problem(present) is None:
        return _fetched(present, written=False)
    _check_target(root)
    new_dirs = _missing_dirs(root.parent)
    try:
        for d in new_dirs:
            d.mkdir()
        _stage_and_move(root, source, archive, progress, timeout)
    except BaseException:
        for d in reversed(new_dirs):  # only folders this call made, and only if still empty
            _try_rmdir(d)
        raise
    return _fetched(root / FOLDER, written=True)


# ---------------------------------------------------------------- the target


def _problem(folder: Path) -> str | None:
    """Why `folder` does not hold complete CIFAR-10 binary data, or None if it does."""
    for name in BIN_FILES:
        if not (folder / name).is_file():
            return f"{name} is missing"
        try:
            data.read_cifar10_bin(folder / name)
        except DataError as e:
            return str(e)
    return None


def _check_target(root: Path) -> None:
    """Refuses a DIR that is a file, or whose cifar-10-batches-bin is there but invalid."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a directory; name another DIR")
    if (root / FOLDER).exists():
        raise DataError(
            f"{root / FOLDER} exists but is not valid CIFAR-10 data ({_problem(root / FOLDER)}); "
            "remove it and rerun"
        )


def _fetched(folder: Path, written: bool) -> Fetched:
    def images(name):
        return (folder / name).stat().st_size // data.RECORD_BYTES

    return Fetched(folder, written, sum(map(images, data.TRAIN_FILES)), images(data.TEST_FILE))


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its ancestors that do not exist yet, outermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _try_rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _stage_and_move(root: Path, source, archive: Archive, progress: bool, timeout: float) -> None:
    """Fetches, verifies and extracts into a temporary folder, then renames it into place."""
    try:
        # Staged on DIR's own file system, so the final rename is atomic.
        parent = root if root.is_dir() else root.parent
        _clean_leftovers(parent)
        staging = Path(tempfile.mkdtemp(prefix=f".cifar10-{os.getpid()}-", dir=parent))
    except OSError as e:
        raise DataError(f"cannot write to {root} ({_one_line(e)}); name another DIR") from e
    try:
        if source is None:
            tarball, what, advice = staging / "archive.tar.gz", f"the download from {archive.url}", FALLBACK
            _download(archive, tarball, progress, timeout)
        else:
            tarball, what = Path(source).expanduser(), f"--from {source}"
            advice = f"fetch the archive again from {archive.url}, or use --data synthetic"
            _verify_local(tarball, archive, progress, what, advice)
        built = staging / "data"
        _extract(tarball, built / FOLDER, what, advice)
        _move_into_place(built, root)
    except OSError as e:
        raise DataError(f"cannot write CIFAR-10 to {root} ({_one_line(e)}); free space or name another DIR") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _clean_leftovers(parent: Path) -> None:
    """Removes staging folders that killed runs left (their process is gone; 118 MB each)."""
    if not parent.is_dir():
        return
    for path in parent.glob(".cifar10-*"):
        owner = path.name.split("-")[1]
        if owner.isdigit() and _alive(int(owner)):
            continue  # another `jaxprune data` is still at work there
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(built: Path, root: Path) -> None:
    """One rename: the whole DIR if it is new, else its cifar-10-batches-bin folder."""
    if root.is_dir():
        os.rename(built / FOLDER, root / FOLDER)
    else:
        os.rename(built, root)


# ---------------------------------------------------------------- fetch and verify


def _download(archive: Archive, dest: Path, progress: bool, timeout: float) -> None:
    """Streams `archive.url` into `dest`, hashing as it goes; raises DataError unless it matches."""
    what = f"the download from {archive.url}"
    try:
        with urllib.request.urlopen(archive.url, timeout=timeout) as response, open(dest, "xb") as out:
            announced = getattr(response, "length", None)  # Content-Length, when the server sent one
            if announced is not None and announced != archive.size:
                raise DataError(
                    f"{archive.url} offers {announced:,} bytes, not the {archive.size:,} expected; {FALLBACK}"
                )
            got = _hash_stream(response.read, archive.size, progress, out.write)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        raise DataError(f"could not download {archive.url} ({_one_line(e)}); {FALLBACK}") from e
    _check_size(got[0], archive, what, FALLBACK)
    _check_hashes(got[1:], archive, what, FALLBACK)


def _verify_local(path: Path, archive: Archive, progress: bool, what: str, advice: str) -> None:
    """Checks a local archive's size (before reading it) and hashes; raises DataError unless they match."""
    if not path.is_file():
        kind = "a directory, not the archive file" if path.is_dir() else "no such file"
        raise DataError(f"{what}: {kind}; {advice}")
    _check_size(path.stat().st_size, archive, what, advice)
    try:
        with open(path, "rb") as f:
            got = _hash_stream(f.read, archive.size, progress)
    except OSError as e:  # not a write failure, which the caller reports
        raise DataError(f"{what}: cannot read it ({_one_line(e)}); {advice}") from e
    _check_size(got[0], archive, what, advice)  # it may have changed since the stat
    _check_hashes(got[1:], archive, what, advice)


def _hash_stream(
    read: Callable[[int], bytes], size: int, progress: bool, sink: Callable[[bytes], object] | None = None
) -> tuple[int, str, str]:
    """Reads to EOF, but at most `size` + 1 bytes, passing each chunk to `sink`.

    Returns (bytes read, MD5 hex, SHA-256 hex); bytes read is `size` + 1 when
    the stream is longer than expected, so it is never read whole.
    """
    from tqdm.auto import tqdm

    md5, sha256, n = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="cifar-10-binary.tar.gz",
              disable=not progress, leave=False) as bar:
        while n <= size and (chunk := read(min(CHUNK, size + 1 - n))):
            md5.update(chunk)
            sha256.update(chunk)
            if sink is not None:
                sink(chunk)
            n += len(chunk)
            bar.update(len(chunk))
    return n, md5.hexdigest(), sha256.hexdigest()


def _check_size(n: int, archive: Archive, what: str, advice: str) -> None:
    if n != archive.size:
        more = " or more" if n > archive.size else ""
        raise DataError(
            f"{what} is {n:,}{more} bytes, not {archive.size:,}: it is truncated or not the "
            f"CIFAR-10 binary version; {advice}"
        )


def _check_hashes(hexes: tuple[str, str], archive: Archive, what: str, advice: str) -> None:
    for name, got, want in zip(("MD5", "SHA-256"), hexes, (archive.md5, archive.sha256)):
        if got != want.lower():
            raise DataError(
                f"{what} has {name} {got}, not {want}: it is corrupt or not the CIFAR-10 binary "
                f"version; {advice}"
            )


# ---------------------------------------------------------------- extract


def _extract(tarball: Path, folder: Path, what: str, advice: str) -> None:
    """Writes the archive's known regular files into `folder` (made here), refusing anything else.

    Members are copied by hand to names from `MEMBERS`, never to a path the
    archive chose, and each .bin file is then checked to be CIFAR-10 records.
    """
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = _allowed_members(tar.getmembers(), what, advice)
            folder.mkdir(parents=True)
            for m in members:
                with tar.extractfile(m) as src, open(folder / PurePosixPath(m.name).name, "xb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{what} is truncated or not a .tar.gz ({_one_line(e)}); {advice}") from e
    problem = _problem(folder)
    if problem is not None:
        problem = _one_line(problem).replace(f"{folder}{os.sep}", f"{FOLDER}/")  # name the member, not the temp file
        raise DataError(f"{what} does not hold valid CIFAR-10 data ({problem}); {advice}")


def _allowed_members(members: list[tarfile.TarInfo], what: str, advice: str) -> list[tarfile.TarInfo]:
    """The regular-file members to extract; raises DataError at the first member that is not one."""
    files: dict[str, tarfile.TarInfo] = {}
    for m in members:
        if m.isdir() and m.name.rstrip("/") == FOLDER:  # the folder's own entry; it is made anyway
            continue
        reason = _refusal(m, files)
        if reason:
            raise DataError(f"{what}: member {m.name!r} {reason}; refusing to extract anything. {advice}")
        files[m.name] = m
    missing = [name for name in BIN_FILES if f"{FOLDER}/{name}" not in files]
    if missing:
        raise DataError(f"{what} lacks {FOLDER}/{missing[0]}: it is not the CIFAR-10 binary version; {advice}")
    return list(files.values())


def _refusal(m: tarfile.TarInfo, seen: dict[str, tarfile.TarInfo]) -> str | None:
    """Why member `m` must not be extracted, or None if it may."""
    path = PurePosixPath(m.name)
    if path.is_absolute() or ".." in path.parts:
        return "would be written outside the target folder"
    if m.name not in MEMBERS:
        return "is not one of CIFAR-10's files"
    if not m.isreg():
        return f"is a {_KINDS.get(m.type, 'special file')}, not a regular file"
    if m.name in seen:
        return "appears twice"
    return None


def _one_line(e: object) -> str:
    """An exception's text with newlines folded, for one-line messages."""
    return " ".join(str(e).split()) or type(e).__name__
