"""CIFAR-10 and CIFAR-100's binary layouts: where each archive is published and what it must be
(`BINARY`, `BinaryLayout`, `Archive`), and reading and writing their ``.bin`` files
(`read_bin`, `write_bin`, `load_bin`; the CIFAR-10 shorthands `read_cifar10_bin`, ...).

Parsed with numpy; nothing is unpickled. Every name here is served by `jaxprune.data.sources`
too, whose registry makes each layout a ``--data NAME-bin:DIR`` source.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
from jaxprune.data.dataset import DataError, Dataset

PIXEL_BYTES = 32 * 32 * 3
RECORD_BYTES = 1 + PIXEL_BYTES  # CIFAR-10's records
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
DEFAULT_CIFAR10_DIR = "~/.cache/cifar10"  # where `jaxprune data cifar10` writes by default


@dataclasses.dataclass(frozen=True)
class Archive:
    """Where a data set's archive is published and exactly what it must be."""

    url: str
    size: int  # bytes
    md5: str  # lowercase hex
    sha256: str  # lowercase hex


@dataclasses.dataclass(frozen=True)
class BinaryLayout:
    """A CIFAR-style binary data set: files of fixed-size records, each some label
    bytes then 3,072 pixel bytes (the R, G and B planes, 32 x 32 each).

    ``shares``: each file's records relative to the others' (train files, then the
    test file): CIFAR-10's six files hold 10,000 each (1, ..., 1), CIFAR-100's
    train.bin five times its test.bin (5, 1). A file short of its share, even cut
    on a record boundary, is refused.
    """

    name: str  # `jaxprune data NAME`; the --data kind is NAME-bin
    title: str  # for messages: "CIFAR-10"
    classes: int
    folder: str  # the archive's folder: DIR/FOLDER holds the files
    train_files: tuple[str, ...]
    test_file: str
    label_bytes: int  # label bytes before the pixels of each record
    label_index: int  # which of them is the class (CIFAR-100: 1, the fine label)
    shares: tuple[int, ...]
    default_dir: str  # where `jaxprune data NAME` writes by default
    archive: Archive
    other_members: tuple[str, ...] = ()  # further files the archive holds (extracted, not read)

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + PIXEL_BYTES

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file)


BINARY: dict[str, BinaryLayout] = {
    "cifar10": BinaryLayout(
        "cifar10", "CIFAR-10", 10, "cifar-10-batches-bin", TRAIN_FILES, TEST_FILE, 1, 0, (1,) * 6,
        DEFAULT_CIFAR10_DIR,
        # The "CIFAR-10 binary version" of www.cs.toronto.edu/~kriz/cifar.html (its MD5
        # there); size and SHA-256 as tensorflow_datasets url_checksums/cifar10.txt.
        Archive("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 170_052_171,
                "c32a1d4ab5d03f1284b67883e8d87530",
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
        ("batches.meta.txt", "readme.html"),
    ),
    "cifar100": BinaryLayout(
        "cifar100", "CIFAR-100", 100, "cifar-100-binary", ("train.bin",), "test.bin", 2, 1, (5, 1),
        "~/.cache/cifar100",
        # The "CIFAR-100 binary version" of www.cs.toronto.edu/~kriz/cifar.html (its MD5
        # there); size and SHA-256 as tensorflow_datasets url_checksums/cifar100.txt.
        Archive("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", 168_513_733,
                "03b5dce01913d631647c71ecec9e9cb8",
                "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),
        ("coarse_label_names.txt", "fine_label_names.txt"),
    ),
}


def read_bin(path: str | os.PathLike, layout: BinaryLayout = BINARY["cifar10"]) -> tuple[np.ndarray, np.ndarray]:
    """Reads one ``.bin`` file of `layout`: (images (N, 32, 32, 3) uint8, labels (N,) int32)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    n = layout.record_bytes
    if raw.size == 0 or raw.size % n:
        raise DataError(
            f"{path} has {raw.size:,} bytes, not a whole number of {n:,}-byte records: "
            f"it is truncated or not {layout.title} binary; rebuild the data set"
        )
    records = raw.reshape(-1, n)
    labels = records[:, layout.label_index].astype(np.int32)
    if labels.max() >= layout.classes:
        raise DataError(
            f"{path} has labels up to {labels.max()}, outside 0-{layout.classes - 1}: it is not {layout.title} binary"
        )
    images = records[:, layout.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar10_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 ``.bin`` file: records of 1 label byte + 3,072 pixel bytes (R, G, B planes)."""
    return read_bin(path, BINARY["cifar10"])


def write_bin(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
              layout: BinaryLayout = BINARY["cifar10"]) -> None:
    """Writes images/labels in `layout` (the inverse of `read_bin`); other label bytes
    (CIFAR-100's coarse label) are written as label // 5, CIFAR-100's grouping of 5 fine classes."""
    planes = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    heads = np.repeat(np.asarray(labels, np.uint8)[:, None] // 5, layout.label_bytes, axis=1)
    heads[:, layout.label_index] = np.asarray(labels, np.uint8)
    np.concatenate([heads, planes], axis=1).tofile(path)


def write_cifar10_bin(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes images/labels in CIFAR-10's binary layout (the inverse of `read_cifar10_bin`)."""
    write_bin(path, images, labels, BINARY["cifar10"])


def bin_folder(directory: str | os.PathLike, layout: BinaryLayout = BINARY["cifar10"]) -> Path:
    """The folder holding the .bin files: DIR/<layout's folder> if it exists, else DIR."""
    root = Path(os.path.expanduser(str(directory)))
    return root / layout.folder if (root / layout.folder).is_dir() else root


def cifar10_folder(directory: str | os.PathLike) -> Path:
    return bin_folder(directory, BINARY["cifar10"])


def load_bin(directory: str | os.PathLike, layout: BinaryLayout = BINARY["cifar10"]) -> Dataset:
    """The data set of `layout` in DIR (or DIR/<folder>); DataError, saying what to do, if it is not there or damaged."""
    root = Path(os.path.expanduser(str(directory)))
    folder = bin_folder(root, layout)
    missing = [f for f in layout.files if not (folder / f).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(
            f"no {layout.title} binary data in {root}: missing {missing[0]}{more}. "
            f"Expected {layout.folder}/ (the '{layout.title} binary version'); download it "
            f"with `jaxprune data {layout.name} {root}` or use --data synthetic"
        )
    parts = [read_bin(folder / f, layout) for f in layout.files]
    # A file cut on a record boundary, or zeroed out, is otherwise valid-looking data.
    units = {f: len(p[1]) / share for f, p, share in zip(layout.files, parts, layout.shares)}
    if len(set(units.values())) > 1:
        short = min(units, key=units.get)
        share = dict(zip(layout.files, layout.shares))[short]
        raise DataError(
            f"{folder / short} has {len(parts[layout.files.index(short)][1]):,} records but the other files "
            f"up to {int(max(units.values()) * share):,}: it is truncated; rebuild the data set"
        )
    for f, (images, _) in zip(layout.files, parts):
        if images.size and (images == images.flat[0]).all():
            raise DataError(f"{folder / f} holds one value ({images.flat[0]}) in every pixel: it is not "
                            f"{layout.title} data (zeroed or damaged); rebuild the data set")
    *train, (test_images, test_labels) = parts
    return Dataset(
        np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train]), test_images, test_labels,
        source=f"{layout.name}-bin:{root}", num_classes=layout.classes,
    )


def load_cifar10_bin(directory: str | os.PathLike) -> Dataset:
    return load_bin(directory, BINARY["cifar10"])

