"""Downloads, verifies and unpacks CIFAR-10's or CIFAR-100's binary version for
``--data cifar10-bin:DIR`` / ``cifar100-bin:DIR``.

`fetch` fetches a data set's official archive (`jaxprune.data.BINARY`) over
HTTP(S) (or takes a local copy), checks its size, MD5 and SHA-256, and writes
``DIR/cifar-10-batches-bin/`` (``DIR/cifar-100-binary/``) holding only the
archive's known regular files. Everything is staged in a
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

from jaxprune.data import sources as data
from jaxprune.runtime import interrupt
from jaxprune.data.sources import DataError
from jaxprune.runtime.faults import fault_point

Archive = data.Archive
BinaryLayout = data.BinaryLayout
FOLDER = data.BINARY["cifar10"].folder
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


CIFAR10 = data.BINARY["cifar10"].archive
CIFAR100 = data.BINARY["cifar100"].archive


def members(layout: BinaryLayout) -> frozenset[str]:
    """Every name the official archive holds; any other member is refused."""
    return frozenset(f"{layout.folder}/{name}" for name in (*layout.files, *layout.other_members))


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What `fetch_cifar10` left in place."""

    folder: Path  # the folder holding the .bin files
    written: bool  # False: valid data was already there and was left alone
    n_train: int  # training images
    n_test: int  # test images


def fetch(
    name: str,
    directory: str | os.PathLike | None = None,
    *,
    source: str | os.PathLike | None = None,
    archive: Archive | None = None,
    progress: bool = True,
    timeout: float = TIMEOUT,
) -> Fetched:
    """Makes ``directory/<the data set's folder>`` unless valid data is already there.

    name: a key of `jaxprune.data.BINARY` (cifar10, cifar100).
    directory: where (None: the data set's default, ~/.cache/NAME).
    source: a local copy of the archive to use instead of downloading it.
    archive: the URL, size and hashes to expect (None: the official one).
    progress: show a progress bar on stderr while downloading or hashing.
    timeout: seconds any one network operation may block.
    """
    layout = data.BINARY[name]
    archive = archive or layout.archive
    root = Path(directory if directory is not None else layout.default_dir).expanduser()
    present = data.bin_folder(root, layout)
    if root.is_dir() and _problem(present, layout) is None:
        return _fetched(present, layout, written=False)
    _check_target(root, layout)
    new_dirs = _missing_dirs(root.parent)
    try:
        for d in new_dirs:
            d.mkdir()
        _stage_and_move(root, source, archive, layout, progress, timeout)
    except BaseException:
        for d in reversed(new_dirs):  # only folders this call made, and only if still empty
            _try_rmdir(d)
        raise
    return _fetched(root / layout.folder, layout, written=True)


def fetch_cifar10(directory: str | os.PathLike = data.DEFAULT_CIFAR10_DIR, **kw) -> Fetched:
    """`fetch` of CIFAR-10."""
    return fetch("cifar10", directory, **kw)


# ---------------------------------------------------------------- the target


def _problem(folder: Path, layout: BinaryLayout) -> str | None:
    """Why `folder` does not hold complete binary data of `layout`, or None if it does."""
    for name in layout.files:
        if not (folder / name).is_file():
            return f"{name} is missing"
        try:
            data.read_bin(folder / name, layout)
        except DataError as e:
            return str(e)
    return None


def _check_target(root: Path, layout: BinaryLayout) -> None:
    """Refuses a DIR that is a file, or whose data folder is there but invalid."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a directory; name another DIR")
    if (root / layout.folder).exists():
        raise DataError(
            f"{root / layout.folder} exists but is not valid {layout.title} data "
            f"({_problem(root / layout.folder, layout)}); remove it and rerun"
        )


def _fetched(folder: Path, layout: BinaryLayout, written: bool) -> Fetched:
    def images(name):
        return (folder / name).stat().st_size // layout.record_bytes

    return Fetched(folder, written, sum(map(images, layout.train_files)), images(layout.test_file))


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


def _stage_and_move(root: Path, source, archive: Archive, layout: BinaryLayout, progress: bool,
                    timeout: float) -> None:
    """Fetches, verifies and extracts into a temporary folder, then renames it into place."""
    try:
        # Staged on DIR's own file system, so the final rename is atomic.
        parent = root if root.is_dir() else root.parent
        _clean_leftovers(parent, layout)
        staging = Path(tempfile.mkdtemp(prefix=f".{layout.name}-{os.getpid()}-", dir=parent))
    except OSError as e:
        raise DataError(f"cannot write to {root} ({_one_line(e)}); name another DIR") from e
    try:
        if source is None:
            tarball, what, advice = staging / "archive.tar.gz", f"the download from {archive.url}", FALLBACK
            _download(archive, layout, tarball, progress, timeout)
        else:
            tarball, what = Path(source).expanduser(), f"--from {source}"
            advice = f"fetch the archive again from {archive.url}, or use --data synthetic"
            _verify_local(tarball, archive, layout, progress, what, advice)
        fault_point("data-file")
        built = staging / "data"
        _extract(tarball, built / layout.folder, layout, what, advice)
        interrupt.check()  # a stop swallowed on the way must not be followed by the data in place
        _move_into_place(built, root, layout)
    except OSError as e:
        raise DataError(f"cannot write {layout.title} to {root} ({_one_line(e)}); free space or name another DIR") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _clean_leftovers(parent: Path, layout: BinaryLayout) -> None:
    """Removes staging folders that killed runs left (their process is gone; ~300 MB each)."""
    if not parent.is_dir():
        return
    for path in parent.glob(f".{layout.name}-*"):
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


def _move_into_place(built: Path, root: Path, layout: BinaryLayout) -> None:
    """One rename: the whole DIR if it is new, else its data folder."""
    if root.is_dir():
        os.rename(built / layout.folder, root / layout.folder)
    else:
        os.rename(built, root)


# ---------------------------------------------------------------- fetch and verify


def _download(archive: Archive, layout: BinaryLayout, dest: Path, progress: bool, timeout: float) -> None:
    """Streams `archive.url` into `dest`, hashing as it goes; raises DataError unless it matches."""
    what = f"the download from {archive.url}"
    try:
        with urllib.request.urlopen(archive.url, timeout=timeout) as response, open(dest, "xb") as out:
            announced = getattr(response, "length", None)  # Content-Length, when the server sent one
            if announced is not None and announced != archive.size:
                raise DataError(
                    f"{archive.url} offers {announced:,} bytes, not the {archive.size:,} expected; {FALLBACK}"
                )
            got = _hash_stream(response.read, archive.size, progress, out.write, desc=_name(archive))
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        raise DataError(f"could not download {archive.url} ({_one_line(e)}); {FALLBACK}") from e
    _check_size(got[0], archive, layout, what, FALLBACK)
    _check_hashes(got[1:], archive, layout, what, FALLBACK)


def _verify_local(path: Path, archive: Archive, layout: BinaryLayout, progress: bool, what: str, advice: str) -> None:
    """Checks a local archive's size (before reading it) and hashes; raises DataError unless they match."""
    if not path.is_file():
        kind = "a directory, not the archive file" if path.is_dir() else "no such file"
        raise DataError(f"{what}: {kind}; {advice}")
    _check_size(path.stat().st_size, archive, layout, what, advice)
    try:
        with open(path, "rb") as f:
            got = _hash_stream(f.read, archive.size, progress, desc=_name(archive))
    except OSError as e:  # not a write failure, which the caller reports
        raise DataError(f"{what}: cannot read it ({_one_line(e)}); {advice}") from e
    _check_size(got[0], archive, layout, what, advice)  # it may have changed since the stat
    _check_hashes(got[1:], archive, layout, what, advice)


def _name(archive: Archive) -> str:
    return archive.url.rsplit("/", 1)[-1]


def _hash_stream(
    read: Callable[[int], bytes], size: int, progress: bool, sink: Callable[[bytes], object] | None = None,
    desc: str = "archive",
) -> tuple[int, str, str]:
    """Reads to EOF, but at most `size` + 1 bytes, passing each chunk to `sink`.

    Returns (bytes read, MD5 hex, SHA-256 hex); bytes read is `size` + 1 when
    the stream is longer than expected, so it is never read whole.
    """
    from tqdm.auto import tqdm

    md5, sha256, n = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              disable=not progress, leave=False) as bar:
        while n <= size and (chunk := read(min(CHUNK, size + 1 - n))):
            md5.update(chunk)
            sha256.update(chunk)
            if sink is not None:
                sink(chunk)
            n += len(chunk)
            bar.update(len(chunk))
    return n, md5.hexdigest(), sha256.hexdigest()


def _check_size(n: int, archive: Archive, layout: BinaryLayout, what: str, advice: str) -> None:
    if n != archive.size:
        more = " or more" if n > archive.size else ""
        raise DataError(
            f"{what} is {n:,}{more} bytes, not {archive.size:,}: it is truncated or not the "
            f"{layout.title} binary version; {advice}"
        )


def _check_hashes(hexes: tuple[str, str], archive: Archive, layout: BinaryLayout, what: str, advice: str) -> None:
    for name, got, want in zip(("MD5", "SHA-256"), hexes, (archive.md5, archive.sha256)):
        if got != want.lower():
            raise DataError(
                f"{what} has {name} {got}, not {want}: it is corrupt or not the {layout.title} binary "
                f"version; {advice}"
            )


# ---------------------------------------------------------------- extract


def _extract(tarball: Path, folder: Path, layout: BinaryLayout, what: str, advice: str) -> None:
    """Writes the archive's known regular files into `folder` (made here), refusing anything else.

    Members are copied by hand to names from `members(layout)`, never to a path
    the archive chose, and each .bin file is then checked to be `layout`'s records.
    """
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            allowed = _allowed_members(tar.getmembers(), layout, what, advice)
            folder.mkdir(parents=True)
            for m in allowed:
                with tar.extractfile(m) as src, open(folder / PurePosixPath(m.name).name, "xb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                fault_point("data-file")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{what} is truncated or not a .tar.gz ({_one_line(e)}); {advice}") from e
    problem = _problem(folder, layout)
    if problem is not None:
        # Name the member, not the temporary file.
        problem = _one_line(problem).replace(f"{folder}{os.sep}", f"{layout.folder}/")
        raise DataError(f"{what} does not hold valid {layout.title} data ({problem}); {advice}")


def _allowed_members(found: list[tarfile.TarInfo], layout: BinaryLayout, what: str, advice: str) -> list[tarfile.TarInfo]:
    """The regular-file members to extract; raises DataError at the first member that is not one."""
    files: dict[str, tarfile.TarInfo] = {}
    for m in found:
        if m.isdir() and m.name.rstrip("/") == layout.folder:  # the folder's own entry; it is made anyway
            continue
        reason = _refusal(m, files, layout)
        if reason:
            raise DataError(f"{what}: member {m.name!r} {reason}; refusing to extract anything. {advice}")
        files[m.name] = m
    missing = [name for name in layout.files if f"{layout.folder}/{name}" not in files]
    if missing:
        raise DataError(f"{what} lacks {layout.folder}/{missing[0]}: it is not the {layout.title} binary version; "
                        f"{advice}")
    return list(files.values())


def _refusal(m: tarfile.TarInfo, seen: dict[str, tarfile.TarInfo], layout: BinaryLayout) -> str | None:
    """Why member `m` must not be extracted, or None if it may."""
    path = PurePosixPath(m.name)
    if path.is_absolute() or ".." in path.parts:
        return "would be written outside the target folder"
    if m.name not in members(layout):
        return f"is not one of {layout.title}'s files"
    if not m.isreg():
        return f"is a {_KINDS.get(m.type, 'special file')}, not a regular file"
    if m.name in seen:
        return "appears twice"
    return None


def _one_line(e: object) -> str:
    """An exception's text with newlines folded, for one-line messages."""
    return " ".join(str(e).split()) or type(e).__name__
