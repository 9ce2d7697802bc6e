"""A damaged final step that a grown study needs is repaired quietly, whatever the cut.

Orbax restores a step's arrays concurrently, on an event loop of its own, and
closes that loop as soon as one read fails (a cut data file, corrupt array
metadata) without cancelling the others. Two kinds of noise followed, each in
some tries only (issue 30, item 4: 44 tracebacks in 1 of 7 tries):

- reads still waiting for TensorStore are abandoned; when the garbage collector
  closes them, Orbax turns the GeneratorExit into an Exception, printed as
  'Exception ignored in: <coroutine object _read_array_index_and_device_put>'
  and a traceback each;
- reads that fail just as the loop closes leave errors no one retrieves:
  asyncio's 'Task (or _GatheringFuture) exception was never retrieved' and a
  traceback each.

Which happens is a race between TensorStore's threads, so `_reads_in_flight`
settles it, with no timers: every read of the damaged step completes first,
those that succeed then wait forever (a slow disk), and those that fail raise
one per turn of the event loop. Every case with reads in flight then abandons
some; the cuts that fail most reads (empty, 1 byte) also leave unretrieved ones.
"""

import asyncio
import contextlib
import gc
import json
import shutil
from pathlib import Path

import pytest
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import serialization

from conftest import SMALL_STUDY
from jaxprune import cli
from jaxprune.report import report
from jaxprune.training import rundir

GROWN = [*SMALL_STUDY, "--targets", "0.5", "0.75"]  # the small study grown by a target (--targets: the last wins)
NOISE = ("Traceback", "Exception ignored", "Task exception", "never retrieved", "never awaited", "Event loop is closed")


@contextlib.contextmanager
def _reads_in_flight(step: Path, parked: list, failed: list):
    """Within it, Orbax's reads of `step` that succeed wait forever (into `parked`),
    and those that fail (into `failed`) raise only once every array of the step has
    been read, one per turn of the event loop: reads are still in flight when Orbax
    gives up, and some fail just as it closes its loop, leaving errors no one
    retrieves. The array metadata's read, if it fails, raises once all are read."""
    read_shard, read_metadatas = serialization._read_shard, array_metadata_store.Store.read
    n = len(json.loads((step / "model" / "_METADATA").read_text())["tree_metadata"])  # read before the cut

    async def turns(k: int):
        for _ in range(k):
            await asyncio.sleep(0)

    async def all_read():
        for _ in range(1_000_000):  # loop turns while TensorStore's threads read
            if len(parked) + len(failed) >= n:
                return
            await asyncio.sleep(0)

    async def shard(t, **kwargs):
        if str(step) not in json.dumps(t.spec().to_json()):
            return await read_shard(t, **kwargs)
        try:
            await read_shard(t, **kwargs)
        except Exception:  # not GeneratorExit: an abandoned read is closed like Orbax's
            failed.append(t)
            i = len(failed)
            await all_read()
            await turns(i)
            raise
        parked.append(t)
        await asyncio.get_running_loop().create_future()  # never done

    async def metadatas(self, checkpoint_dir, *args, **kwargs):
        try:
            return await read_metadatas(self, checkpoint_dir, *args, **kwargs)
        except Exception:
            if str(step) in str(checkpoint_dir):
                await all_read()
            raise

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serialization, "_read_shard", shard)
        mp.setattr(array_metadata_store.Store, "read", metadatas)
        yield n


def _largest_data_file(final: Path) -> Path:
    return max((final / "model").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)


def _corrupt_middle(b: bytes) -> bytes:
    m = len(b) // 2
    return b[:m] + bytes(x ^ 0xFF for x in b[m:m + 16]) + b[m + 16:]


CASES = [  # which file of the final step, how it is cut, and how its arrays' reads end
    # Those that printed tracebacks (some of the time):
    ("largest data file", "half", "some fail"),  # the issue's
    ("largest data file", "empty", "some fail"),  # these two also leave errors no one retrieves
    ("largest data file", "1 byte", "some fail"),
    ("array metadata", "corrupt middle", "all succeed"),  # its own read fails
    ("array metadata", "half", "all succeed"),
    # Those that fail before any array is read, and never did:
    ("ocdbt manifest", "half", "none start"),
    ("meta item", "half", "none start"),
]
FILES = {
    "largest data file": _largest_data_file,
    "array metadata": lambda final: final / "model" / "array_metadatas" / "process_0",
    "ocdbt manifest": lambda final: final / "model" / "manifest.ocdbt",
    "meta item": lambda final: final / "meta" / "metadata",
}
CUTS = {
    "half": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "1 byte": lambda b: b[:1],
    "corrupt middle": _corrupt_middle,
}


@pytest.mark.slow
# Under pytest, what the quiet hook passes on may reach pytest's own unraisable hook instead of stderr.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("file, cut, reads", CASES, ids=[f"{f}-{c}".replace(" ", "_") for f, c, _ in CASES])
def test_a_damaged_final_step_is_repaired_without_tracebacks(tmp_path, capfd, caplog, small_study, file, cut, reads):
    w = Path(shutil.copytree(small_study, tmp_path / "s"))
    final = w / "baseline" / "checkpoints" / "1"  # the 1-epoch baseline's final step, which 0.75 prunes
    parked, failed = [], []
    with _reads_in_flight(final, parked, failed) as n:
        damaged = FILES[file](final)
        damaged.write_bytes(CUTS[cut](damaged.read_bytes()))
        capfd.readouterr()
        code = cli.main([*GROWN, "--workdir", str(w)])
        gc.collect()  # the abandoned reads are finalized now, not at some later collection
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    # Every array was read before the restore gave up (those the cut reaches failed), or none was.
    expected = {"some fail": (n, True), "all succeed": (n, False), "none start": (0, False)}[reads]
    assert (len(parked) + len(failed), bool(failed)) == expected, (len(parked), len(failed))
    logged = "\n".join(r.getMessage() for r in caplog.records)  # under pytest, logging goes here, not to stderr
    assert not [word for word in NOISE if word in out + err + logged], (err + logged)[-3000:]
    lines = err.strip().splitlines()
    assert all(line.startswith("jaxprune: checkpoint ") for line in lines), lines  # one-line notices only
    assert "moved aside to 1.damaged" in lines[-1] and (final.parent / "1.damaged").is_dir()
    if file != "meta item":  # that one is unfinished from the start: trained again without a word
        assert "[again] baseline: its final epoch is damaged" in out
    assert [r["epoch"] for r in rundir.read_metrics(w / "baseline")] == [1]
    assert rundir.read_metrics(w / "oneshot-magnitude-0.75" / "round-01")
    assert set(report.read_results(w / "results.csv")["target"]) == {0.0, 0.5, 0.75}  # the baseline's is 0
