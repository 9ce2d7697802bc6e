"""`jaxprune data cifar10`: a tiny archive in the real layout, served over HTTP on 127.0.0.1.

Every refusal must leave nothing behind: the tests list the directories.
"""

import dataclasses
import hashlib
import os
import subprocess
import sys
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from jaxprune import cli
from jaxprune.data import sources as data, download
from jaxprune.data.sources import DataError

FOLDER = "cifar-10-batches-bin"
BINS = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
N = 3  # records per .bin file
EXTRAS = {"batches.meta.txt": b"airplane\nautomobile\n", "readme.html": b"<p>tiny CIFAR-10</p>\n"}


# ---------------------------------------------------------------- archives


def pack(images, labels) -> bytes:
    """CIFAR-10 records written by hand: label byte, then the R, G and B planes."""
    return b"".join(bytes([int(y)]) + img.transpose(2, 0, 1).tobytes() for img, y in zip(images, labels))


def member(name, payload=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    info.size = len(payload) if kind == tarfile.REGTYPE else 0
    return info, payload


def tar_gz(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    return buf.getvalue()


@pytest.fixture(scope="module")
def records():
    """{bin name: (images (N, 32, 32, 3) uint8, labels (N,) int32)}, distinct per file."""
    rng = np.random.default_rng(7)
    return {
        name: (rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, N).astype(np.int32))
        for name in BINS
    }


@pytest.fixture(scope="module")
def good_members(records):
    """The official archive's members, in its layout, with tiny contents."""
    bins = [member(f"{FOLDER}/{name}", pack(*records[name])) for name in BINS]
    extras = [member(f"{FOLDER}/{name}", payload) for name, payload in EXTRAS.items()]
    return [member(FOLDER, kind=tarfile.DIRTYPE), *bins, *extras]


@pytest.fixture(scope="module")
def good_archive(good_members):
    return tar_gz(good_members)


def spec(body: bytes, url="http://127.0.0.1:9/unused") -> download.Archive:
    """What `body` must be: the test's own stand-in for the official size and hashes."""
    return download.Archive(url, len(body), hashlib.md5(body).hexdigest(), hashlib.sha256(body).hexdigest())


def official(monkeypatch, archive, name="cifar10"):
    """Makes `archive` the one the CLI expects for `name`."""
    monkeypatch.setitem(data.BINARY, name, dataclasses.replace(data.BINARY[name], archive=archive))


def tree(path):
    """Every path below `path`, hidden ones included, relative and sorted."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the server


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    timeout = 10  # seconds: no socket operation of the server blocks longer

    def do_GET(self):
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, length = self.routes[self.path]
        self.send_response(200)
        if length is not None:  # else the body ends where the connection does
            self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading early, as it should for an oversized body

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(path, body=None, length=len(body)) -> URL; no body: a 404. HTTP/1.0: one response per connection."""
    routes = {}
    server = http.server.HTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"routes": routes}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def add(path, body=None, length=...):
        if body is not None:
            routes[path] = (body, len(body) if length is ... else length)
        return f"http://127.0.0.1:{server.server_port}{path}"

    yield add
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()
    assert not thread.is_alive()


def fetch(directory, archive, **kw):
    return download.fetch_cifar10(directory, archive=archive, progress=False, timeout=10, **kw)


def assert_loads_exactly(directory, records):
    ds = data.load(f"cifar10-bin:{directory}")
    np.testing.assert_array_equal(ds.train_images, np.concatenate([records[n][0] for n in BINS[:5]]))
    np.testing.assert_array_equal(ds.train_labels, np.concatenate([records[n][1] for n in BINS[:5]]))
    np.testing.assert_array_equal(ds.test_images, records["test_batch.bin"][0])
    np.testing.assert_array_equal(ds.test_labels, records["test_batch.bin"][1])


# ---------------------------------------------------------------- success


@pytest.mark.parametrize("dir_exists", [False, True])
def test_download_unpacks_exactly_the_packed_records(tmp_path, serve, good_archive, records, dir_exists):
    target = tmp_path / "new" / "c10"
    if dir_exists:
        target.mkdir(parents=True)
        (target / "notes.txt").write_bytes(b"mine")
    url = serve("/cifar-10-binary.tar.gz", good_archive)
    got = fetch(target, spec(good_archive, url))
    assert got == download.Fetched(target / FOLDER, written=True, n_train=5 * N, n_test=N)
    assert_loads_exactly(target, records)
    expected = [f"{FOLDER}/{n}" for n in BINS + list(EXTRAS)] + [FOLDER] + (["notes.txt"] if dir_exists else [])
    assert tree(tmp_path / "new") == sorted(["c10", *(f"c10/{p}" for p in expected)])
    for name, payload in EXTRAS.items():
        assert (target / FOLDER / name).read_bytes() == payload
    assert (target / FOLDER / "data_batch_2.bin").read_bytes() == pack(*records["data_batch_2.bin"])


def test_from_file_unpacks_and_keeps_the_archive(tmp_path, good_archive, records):
    source = tmp_path / "cifar-10-binary.tar.gz"
    source.write_bytes(good_archive)
    got = fetch(tmp_path / "c10", spec(good_archive), source=source)
    assert got.written and got.folder == tmp_path / "c10" / FOLDER
    assert_loads_exactly(tmp_path / "c10", records)
    assert source.read_bytes() == good_archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c10", "cifar-10-binary.tar.gz"]


def test_valid_data_is_left_alone(tmp_path, good_archive, capsys):
    source = tmp_path / "a.tar.gz"
    source.write_bytes(good_archive)
    target = tmp_path / "c10"
    fetch(target, spec(good_archive), source=source)
    before = {p: p.stat().st_mtime_ns for p in [target, *target.rglob("*")]}
    # A download would fail (closed port): nothing may be fetched or touched.
    nowhere = spec(good_archive, f"http://127.0.0.1:{closed_port()}/x")
    assert fetch(target, nowhere) == download.Fetched(target / FOLDER, written=False, n_train=5 * N, n_test=N)
    # The CLI does not even look at --from when the data is there.
    assert cli.main(["data", "cifar10", str(target), "--from", str(tmp_path / "missing"), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{target / FOLDER}: CIFAR-10 already present (15 training and 3 test images); left as it is\n"
    assert err == ""
    assert {p: p.stat().st_mtime_ns for p in [target, *target.rglob("*")]} == before


def test_cli_writes_and_reports(tmp_path, good_archive, records, monkeypatch, capsys):
    source = tmp_path / "a.tar.gz"
    source.write_bytes(good_archive)
    official(monkeypatch, spec(good_archive))  # the CLI's official values, for this archive
    target = tmp_path / "c10"
    assert cli.main(["data", "cifar10", str(target), "--from", str(source), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{target / FOLDER}: CIFAR-10 written (15 training and 3 test images); use --data cifar10-bin:{target}\n"
    assert err == ""
    assert_loads_exactly(target, records)


def test_cifar100_is_fetched_checked_and_unpacked_the_same_way(tmp_path, serve, monkeypatch, capsys):
    """`jaxprune data cifar100`: its own folder, files and records (coarse + fine label bytes)."""
    rng = np.random.default_rng(3)
    fine = {"train.bin": rng.integers(0, 100, 10), "test.bin": rng.integers(0, 100, 2)}
    images = {n: rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8) for n, y in fine.items()}
    packed = {n: b"".join(bytes([int(y) // 5, int(y)]) + img.transpose(2, 0, 1).tobytes()
                          for img, y in zip(images[n], fine[n])) for n in fine}
    folder = "cifar-100-binary"
    members = [member(folder, kind=tarfile.DIRTYPE), *(member(f"{folder}/{n}", b) for n, b in packed.items()),
               member(f"{folder}/fine_label_names.txt", b"apple\n"), member(f"{folder}/coarse_label_names.txt", b"fruit\n")]
    body = tar_gz(members)
    url = serve("/cifar-100-binary.tar.gz", body)
    official(monkeypatch, spec(body, url), "cifar100")
    target = tmp_path / "c100"
    assert cli.main(["data", "cifar100", str(target), "--no-progress"]) == 0
    assert capsys.readouterr().out == (f"{target / folder}: CIFAR-100 written (10 training and 2 test images); "
                                       f"use --data cifar100-bin:{target}\n")
    ds = data.load(f"cifar100-bin:{target}")
    np.testing.assert_array_equal(ds.train_labels, fine["train.bin"])
    np.testing.assert_array_equal(ds.test_images, images["test.bin"])
    assert (target / folder / "fine_label_names.txt").read_bytes() == b"apple\n"
    assert cli.main(["data", "cifar100", str(target), "--no-progress"]) == 0  # present: left alone
    assert "CIFAR-100 already present" in capsys.readouterr().out
    # A CIFAR-10 member in a CIFAR-100 archive is refused, and nothing is left behind.
    odd = tar_gz([*members, member(f"{folder}/data_batch_1.bin", b"x")])
    official(monkeypatch, spec(odd, serve("/odd.tar.gz", odd)), "cifar100")
    with pytest.raises(DataError, match="data_batch_1.bin' is not one of CIFAR-100's files"):
        download.fetch("cifar100", tmp_path / "other", progress=False, timeout=10)
    assert not (tmp_path / "other").exists()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    # Words without hyphens: argparse may wrap lines at one.
    for words in ("cifar10", "DIR", "default: ~/.cache/cifar10", "--from FILE", "instead of downloading",
                  "--no-progress", "no progress bar", "MD5", "leaves nothing behind"):
        assert words in out


def test_missing_data_error_names_the_downloader(tmp_path):
    with pytest.raises(DataError, match=f"`jaxprune data cifar10 {tmp_path / 'none'}` or use --data synthetic"):
        data.load(f"cifar10-bin:{tmp_path / 'none'}")


# ---------------------------------------------------------------- failures leave nothing


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_unreachable_server_is_one_line_and_leaves_nothing(tmp_path, good_archive):
    url = f"http://127.0.0.1:{closed_port()}/cifar-10-binary.tar.gz"
    with pytest.raises(DataError) as e:
        fetch(tmp_path / "new" / "deeper" / "c10", spec(good_archive, url))
    text = one_line(e)
    assert text.startswith(f"could not download {url} (")
    assert text.endswith("; fetch the archive elsewhere and pass it with --from FILE, or use --data synthetic")
    assert tree(tmp_path) == []  # not even the parents it made


@pytest.mark.parametrize(
    "served, length, words",
    [
        (None, None, "(HTTP Error 404: "),
        ("half", "full", "is {half:,} bytes, not {full:,}: it is truncated"),  # cut off mid-body
        ("half", None, "is {half:,} bytes, not {full:,}: it is truncated"),
        ("full", "full+1", "offers {full1:,} bytes, not the {full:,} expected"),  # refused before reading
        ("full+junk", None, "is {full1:,} or more bytes, not {full:,}"),
    ],
)
def test_bad_download_is_refused_and_leaves_nothing(tmp_path, serve, good_archive, served, length, words):
    full, half = len(good_archive), len(good_archive) // 2
    bodies = {None: None, "half": good_archive[:half], "full": good_archive, "full+junk": good_archive + b"x" * 9}
    lengths = {None: None, "full": full, "full+1": full + 1}
    url = serve("/cifar-10-binary.tar.gz", bodies[served], lengths[length])
    with pytest.raises(DataError) as e:
        fetch(tmp_path / "c10", spec(good_archive, url))
    assert words.format(full=full, half=half, full1=full + 1) in one_line(e)
    assert "--from FILE" in str(e.value)
    assert tree(tmp_path) == []


def test_an_endless_stream_is_read_only_to_size_plus_one():
    calls = []

    def endless(n):
        calls.append(n)
        return b"\0" * n

    assert download._hash_stream(endless, 10, progress=False)[0] == 11
    assert sum(calls) == 11


@pytest.mark.parametrize("which", ["md5", "sha256"])
def test_wrong_checksum_is_refused_and_leaves_nothing(tmp_path, serve, good_archive, which):
    url = serve("/a.tar.gz", good_archive)
    right = spec(good_archive, url)
    wrong = download.Archive(**{**vars(right), which: "0" * len(getattr(right, which))})
    with pytest.raises(DataError) as e:
        fetch(tmp_path / "c10", wrong)
    name = {"md5": "MD5", "sha256": "SHA-256"}[which]
    assert f"has {name} {getattr(right, which)}, not {'0' * len(getattr(right, which))}: it is corrupt" in one_line(e)
    assert tree(tmp_path) == []


def test_truncated_archive_with_matching_hashes_is_refused(tmp_path, good_archive):
    """Hashes cannot catch what a custom spec vouches for; reading the tar must."""
    cut = good_archive[: len(good_archive) * 2 // 3]
    source = tmp_path / "cut.tar.gz"
    source.write_bytes(cut)
    with pytest.raises(DataError) as e:
        fetch(tmp_path / "c10", spec(cut), source=source)
    assert f"--from {source} is truncated or not a .tar.gz (" in one_line(e)
    assert tree(tmp_path) == ["cut.tar.gz"]


def test_interrupted_run_leaves_nothing(tmp_path, good_archive, monkeypatch):
    source = tmp_path / "a.tar.gz"
    source.write_bytes(good_archive)

    def cut_off(built, root, layout):
        assert (built / FOLDER / "test_batch.bin").is_file()  # everything was staged
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_move_into_place", cut_off)
    with pytest.raises(KeyboardInterrupt):
        fetch(tmp_path / "new" / "c10", spec(good_archive), source=source)
    assert tree(tmp_path) == ["a.tar.gz"]


def test_a_killed_runs_staging_folder_is_cleaned_by_the_next_run(tmp_path, good_archive, records):
    source = tmp_path / "a.tar.gz"
    source.write_bytes(good_archive)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".cifar10-{int(dead.stdout)}-abcd1234"  # as a SIGKILLed run leaves it
    (left / "data").mkdir(parents=True)
    (left / "data" / "big.bin").write_bytes(b"\0" * 1000)
    live = tmp_path / f".cifar10-{os.getpid()}-efgh5678"  # a run still at work: not touched
    live.mkdir()
    fetch(tmp_path / "c10", spec(good_archive), source=source)
    assert not left.exists() and live.is_dir()
    assert_loads_exactly(tmp_path / "c10", records)


def _bad_members(tmp_path):
    """name -> (members replacing or joining the good ones, words the refusal must say)."""
    bin1 = f"{FOLDER}/data_batch_1.bin"
    return {
        "escape": ([member("../evil", b"x")], "member '../evil' would be written outside the target folder"),
        "nested-escape": ([member(f"{FOLDER}/../../evil", b"x")], "would be written outside the target folder"),
        "absolute": ([member(str(tmp_path / "abs-evil"), b"x")], "would be written outside the target folder"),
        "symlink": ([member(bin1, kind=tarfile.SYMTYPE, linkname=str(tmp_path / "a.tar.gz"))],
                    f"member '{bin1}' is a symbolic link, not a regular file"),
        "hardlink": ([member(bin1, kind=tarfile.LNKTYPE, linkname=f"{FOLDER}/data_batch_2.bin")],
                     "is a hard link, not a regular file"),
        "device": ([member(bin1, kind=tarfile.CHRTYPE)], "is a character device, not a regular file"),
        "unexpected": ([member(f"{FOLDER}/extra.bin", b"x")], f"member '{FOLDER}/extra.bin' is not one of CIFAR-10's files"),
        "dot-slash": ([member(f"./{bin1}", b"x")], "is not one of CIFAR-10's files"),
        "duplicate": ([member(f"{FOLDER}/readme.html", b"again")], "appears twice"),
        "not-records": ([member(bin1, b"\0" * 3000)],
                        f"does not hold valid CIFAR-10 data ({bin1} has 3,000 bytes, not a whole number"),
        "bad-label": ([member(bin1, b"\x0a" + b"\0" * 3072)], "labels up to 10, outside 0-9"),
    }


@pytest.mark.parametrize("case", list(_bad_members(Path("/"))))  # the names; paths come per test
def test_bad_member_is_refused_with_nothing_extracted(tmp_path, good_members, case):
    extra, words = _bad_members(tmp_path)[case]
    replaced = {info.name for info, _ in extra} - {f"{FOLDER}/readme.html"}
    # The bad member comes last, after every good one a lazy extractor would already have written.
    archive = tar_gz([m for m in good_members if m[0].name not in replaced] + extra)
    source = tmp_path / "a.tar.gz"
    source.write_bytes(archive)
    with pytest.raises(DataError) as e:
        fetch(tmp_path / "out" / "c10", spec(archive), source=source)
    assert words in one_line(e)
    assert tree(tmp_path) == ["a.tar.gz"]
    assert not (tmp_path.parent / "evil").exists()


def test_missing_member_is_refused(tmp_path, good_members):
    archive = tar_gz([m for m in good_members if m[0].name != f"{FOLDER}/test_batch.bin"])
    source = tmp_path / "a.tar.gz"
    source.write_bytes(archive)
    with pytest.raises(DataError, match=f"lacks {FOLDER}/test_batch.bin: it is not the CIFAR-10 binary version"):
        fetch(tmp_path / "c10", spec(archive), source=source)
    assert tree(tmp_path) == ["a.tar.gz"]


# ---------------------------------------------------------------- the CLI's one-line errors


def cli_fails(args, capsys) -> str:
    """Runs the CLI, which must exit 2 with one stderr line and no stdout; returns that line."""
    assert cli.main(["data", "cifar10", *args, "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("jaxprune data: error: ")
    return err


def test_cli_wrong_size_file_against_the_official_values(tmp_path, capsys):
    source = tmp_path / "a.tar.gz"
    source.write_bytes(b"not an archive")
    err = cli_fails([str(tmp_path / "c10"), "--from", str(source)], capsys)
    assert f"--from {source} is 14 bytes, not 170,052,171: it is truncated" in err
    assert tree(tmp_path) == ["a.tar.gz"]


def test_cli_wrong_checksum_against_the_official_values(tmp_path, capsys):
    source = tmp_path / "zeros.tar.gz"
    with open(source, "wb") as f:
        f.truncate(170_052_171)  # sparse: the official size, all zeros
    err = cli_fails([str(tmp_path / "c10"), "--from", str(source)], capsys)
    assert "has MD5 " in err and ", not c32a1d4ab5d03f1284b67883e8d87530: it is corrupt" in err
    assert tree(tmp_path) == ["zeros.tar.gz"]


def test_cli_missing_from_file(tmp_path, capsys):
    err = cli_fails([str(tmp_path / "c10"), "--from", str(tmp_path / "nope.tar.gz")], capsys)
    assert f"--from {tmp_path / 'nope.tar.gz'}: no such file" in err
    assert tree(tmp_path) == []


def test_cli_download_failure_says_what_to_do(tmp_path, good_archive, monkeypatch, capsys):
    url = f"http://127.0.0.1:{closed_port()}/cifar-10-binary.tar.gz"
    official(monkeypatch, spec(good_archive, url))
    err = cli_fails([str(tmp_path / "c10")], capsys)
    assert err.endswith("fetch the archive elsewhere and pass it with --from FILE, or use --data synthetic\n")
    assert tree(tmp_path) == []


def test_cli_refuses_invalid_existing_folder(tmp_path, capsys):
    (tmp_path / "c10" / FOLDER).mkdir(parents=True)
    (tmp_path / "c10" / FOLDER / "data_batch_1.bin").write_bytes(b"\0" * 10)
    err = cli_fails([str(tmp_path / "c10"), "--from", str(tmp_path / "unused")], capsys)
    assert f"{tmp_path / 'c10' / FOLDER} exists but is not valid CIFAR-10 data (" in err
    assert "remove it and rerun" in err
    assert tree(tmp_path) == ["c10", f"c10/{FOLDER}", f"c10/{FOLDER}/data_batch_1.bin"]


def test_a_signal_at_every_step_of_data_leaves_nothing(tmp_path, good_archive, monkeypatch, capfd):
    # SIGTERM or SIGINT after the archive is verified and after each file it unpacks, in this
    # process: exit 128 + signal, one line, no data set and no staging folder left.
    from jaxprune.runtime import faults

    source = tmp_path / "a.tar.gz"
    source.write_bytes(good_archive)
    official(monkeypatch, spec(good_archive))
    args = ["data", "cifar10", None, "--from", str(source), "--no-progress"]
    monkeypatch.setenv("JAXPRUNE_FAULT", "data-file:1000000:term")
    monkeypatch.setattr(faults, "_counts", {})
    assert cli.main([*args[:2], str(tmp_path / "count"), *args[3:]]) == 0
    n = faults._counts["data-file"]
    assert n == 1 + len(BINS) + len(EXTRAS)
    for k in range(1, n + 1):
        how, code = ("int", 130) if k % 2 else ("term", 143)
        target = tmp_path / f"c10-{k}"
        monkeypatch.setenv("JAXPRUNE_FAULT", f"data-file:{k}:{how}")
        monkeypatch.setattr(faults, "_counts", {})
        capfd.readouterr()
        assert cli.main([*args[:2], str(target), *args[3:]]) == code, k
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "stopped by SIG" in err[0], (k, err)
        assert not target.exists(), k
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], k
