"""Data sets as uint8 arrays, from a registry of sources, and on-device augmentation.

Sources (the ``--data`` spec, ``KIND[:ARGUMENT]``; `register_source` adds one):

- ``cifar10-bin:DIR``: CIFAR-10's original binary layout
  (``DIR/cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``; DIR
  may also be that folder itself). Parsed with numpy; nothing is unpickled.
- ``cifar100-bin:DIR``: CIFAR-100's binary layout (``DIR/cifar-100-binary/
  {train,test}.bin``, records of a coarse and a fine label byte; the 100 fine
  labels are the classes).
- ``tfds[:DATA_DIR]``: a prepared TensorFlow Datasets ``cifar10``, read with
  ``tfds.data_source`` (no TensorFlow needed to read; it is needed to prepare).
- ``synthetic[:N_TRAIN[,N_TEST[,CLASSES]]]``: a deterministic, learnable
  CIFAR-shaped set (a fixed pattern per class plus noise), for tests and the
  smoke preset; 10 classes unless CLASSES says otherwise.

Images are (N, 32, 32, 3) uint8, labels (N,) int32 in [0, classes). The model's
output layer has the source's class count (`num_classes`). Augmentation and
normalisation run on the device, inside the jitted train step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxprune.runtime.errors import UserError

# Per-channel (mean, std) of images scaled to [0, 1], by --normalization name.
NORMALIZATIONS = {
    # torchvision's CIFAR-10 figures, as in kuangliu/pytorch-cifar main.py (the write-up's).
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # ImageNet's, which open_lth's datasets/cifar10.py uses for CIFAR-10.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # CIFAR-100's training-set figures, as in weiaicunzai/pytorch-cifar100 conf/global_settings.py.
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
MEAN, STD = NORMALIZATIONS["cifar10"]
PAD = 4  # pixels of zero padding before the random 32x32 crop
NUM_CLASSES = 10  # CIFAR-10's; other sources say their own (`num_classes`)
PIXEL_BYTES = 32 * 32 * 3
RECORD_BYTES = 1 + PIXEL_BYTES  # CIFAR-10's records
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
DEFAULT_CIFAR10_DIR = "~/.cache/cifar10"  # where `jaxprune data cifar10` writes by default


class DataError(UserError):
    """Missing or malformed data; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train and a test split as host arrays."""

    train_images: np.ndarray  # (N, 32, 32, 3) uint8
    train_labels: np.ndarray  # (N,) int32 in [0, num_classes)
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    val_images: np.ndarray | None = None  # held out of the training split by `with_validation`
    val_labels: np.ndarray | None = None
    num_classes: int = NUM_CLASSES  # the model's outputs

    def with_validation(self, n_val: int) -> "Dataset":
        """Holds `n_val` training images out as a validation split (0: unchanged).

        The held-out images are a fixed random subset (numpy seed 0), the same
        for every run on this data, so every phase of a study selects its best
        epoch on the same images; the rest keep their order for training.
        """
        if not n_val:
            return self
        n = len(self.train_labels)
        if n_val >= n:
            raise DataError(f"--val-split {n_val} leaves no training images (the split has {n:,})")
        held = np.zeros(n, bool)
        held[np.random.default_rng(0).permutation(n)[:n_val]] = True
        return dataclasses.replace(
            self,
            train_images=self.train_images[~held], train_labels=self.train_labels[~held],
            val_images=self.train_images[held], val_labels=self.train_labels[held],
        )

    def prepared(self, cfg) -> "Dataset":
        """What a run with TrainConfig `cfg` trains on: the validation split held out, then the subset.

        Idempotent: a data set that already has its validation split keeps it."""
        held = self if self.val_labels is not None else self.with_validation(cfg.val_split)
        return held.subset(cfg.train_subset)

    def subset(self, n_train: int) -> "Dataset":
        """The first `n_train` training images (the test split is kept whole)."""
        if n_train > len(self.train_labels):
            raise DataError(f"--train-subset {n_train} is more than the {len(self.train_labels)} training images")
        if not n_train or n_train == len(self.train_labels):
            return self
        return dataclasses.replace(
            self,
            train_images=self.train_images[:n_train],
            train_labels=self.train_labels[:n_train],
        )


# ---------------------------------------------------------------- the binary layouts


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


# ---------------------------------------------------------------- TFDS


def load_tfds(data_dir: str | None = None) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise DataError(f"tensorflow-datasets is not importable ({e}); use --data cifar10-bin:DIR") from e
    splits = {}
    for split in ("train", "test"):
        try:
            source = tfds.data_source("cifar10", split=split, data_dir=data_dir, download=False)
            records = [source[i] for i in range(len(source))]
        except Exception as e:  # tfds raises several types for "not prepared"
            where = data_dir or "TFDS's default data_dir"
            raise DataError(
                f"no prepared TFDS cifar10 in {where} ({type(e).__name__}). Preparing it needs "
                "TensorFlow: `pip install tensorflow` and run tfds.builder('cifar10', "
                "file_format='array_record').download_and_prepare(); or use the binary "
                "layout with --data cifar10-bin:DIR"
            ) from e
        images = np.stack([r["image"] for r in records]).astype(np.uint8)
        labels = np.asarray([r["label"] for r in records], np.int32)
        if images.shape[1:] != (32, 32, 3) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise DataError(f"TFDS cifar10 {split} split has images {images.shape[1:]} or labels out of 0-9")
        splits[split] = (images, labels)
    return Dataset(*splits["train"], *splits["test"], source=f"tfds:{data_dir or ''}")


# ---------------------------------------------------------------- synthetic


def synthetic(n_train: int = 10_000, n_test: int = 2_000, seed: int = 0, classes: int = NUM_CLASSES) -> Dataset:
    """A learnable stand-in for CIFAR: per class a fixed smooth colour pattern, plus noise.

    Deterministic in (n_train, n_test, seed, classes). A small ResNet reaches well
    above chance within an epoch or two; noise and random shifts keep it from
    being trivial.
    """
    rng = np.random.default_rng(seed)
    # Low-frequency patterns: random 4x4x3 grids upsampled to 32x32.
    coarse = rng.uniform(-1, 1, (classes, 4, 4, 3))
    patterns = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)

    def make(n):
        labels = rng.integers(0, classes, n).astype(np.int32)
        shifts = rng.integers(-3, 4, (n, 2))
        imgs = np.empty((n, 32, 32, 3), np.float32)
        for i in range(n):
            imgs[i] = np.roll(patterns[labels[i]], tuple(shifts[i]), axis=(0, 1))
        imgs = 128 + 50 * imgs + rng.normal(0, 90, imgs.shape)
        return np.clip(imgs, 0, 255).astype(np.uint8), labels

    train = make(n_train)
    test = make(n_test)
    name = f"synthetic:{n_train},{n_test}" + (f",{classes}" if classes != NUM_CLASSES else "")
    return Dataset(*train, *test, source=name, num_classes=classes)


def _synthetic_sizes(arg: str) -> tuple[int, int, int]:
    """(n_train, n_test, classes) of a synthetic spec's argument; DataError if malformed."""
    try:
        sizes = [int(x) for x in arg.split(",")] if arg else []
    except ValueError:
        sizes = [-1]
    if len(sizes) > 3 or any(n <= 0 for n in sizes) or (len(sizes) == 3 and sizes[2] < 2):
        raise DataError(f"bad synthetic spec 'synthetic:{arg}': use synthetic[:N_TRAIN[,N_TEST[,CLASSES]]] "
                        "with positive sizes and at least 2 classes")
    n_train = sizes[0] if sizes else 10_000
    n_test = sizes[1] if len(sizes) > 1 else max(1, n_train // 5)
    return n_train, n_test, sizes[2] if len(sizes) > 2 else NUM_CLASSES


# ---------------------------------------------------------------- the --data registry


@dataclasses.dataclass(frozen=True)
class Source:
    """What a ``--data KIND[:ARGUMENT]`` spec names.

    Attributes:
      kind: the spec's prefix.
      usage: how to write it, for help and messages ("cifar10-bin:DIR").
      load: ``load(argument)`` -> Dataset.
      classes: ``classes(argument)`` -> the class count, without loading anything.
      check: ``check(argument)``: raises DataError for a malformed argument (cheap; no I/O).
    """

    kind: str
    usage: str
    load: Callable[[str], Dataset]
    classes: Callable[[str], int]
    check: Callable[[str], None] = lambda arg: None


SOURCES: dict[str, Source] = {}


def register_source(kind: str, load: Callable[[str], Dataset], classes: int | Callable[[str], int], *,
                    usage: str = "", check: Callable[[str], None] | None = None, replace: bool = False) -> Source:
    """Adds a data source that ``--data KIND[:ARGUMENT]`` (and `jaxprune.study.run`) can load.

    `load(argument)` returns a `Dataset` (uint8 NHWC 32x32x3 images, int32 labels
    in [0, classes)); `classes` is its class count, or a function of the argument."""
    if not replace and kind in SOURCES:
        raise DataError(f"a data source {kind!r} is already registered; pass replace=True to replace it")
    count = classes if callable(classes) else (lambda arg, n=int(classes): n)
    SOURCES[kind] = Source(kind, usage or f"{kind}[:ARGUMENT]", load, count, check or (lambda arg: None))
    return SOURCES[kind]


def register_arrays(name: str, dataset: Dataset, *, replace: bool = False) -> Source:
    """Makes in-memory arrays a data source: ``--data NAME`` (or ``TrainConfig(data=NAME)``)
    then trains on `dataset`, whose ``num_classes`` sizes the model's output layer.

    The arrays are checked here: uint8 images (N, 32, 32, 3), int32-castable labels in
    [0, num_classes). A run records their fingerprint, so resuming it on other arrays is
    refused."""
    for split in ("train", "test"):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise DataError(f"{name}: {split}_images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}")
        if len(labels) != len(images) or len(labels) == 0:
            raise DataError(f"{name}: {split} has {len(images)} images and {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= dataset.num_classes:
            raise DataError(f"{name}: {split}_labels must lie in [0, {dataset.num_classes}) (num_classes), "
                            f"got {labels.min()}..{labels.max()}")
    held = dataclasses.replace(dataset, train_labels=np.asarray(dataset.train_labels, np.int32),
                               test_labels=np.asarray(dataset.test_labels, np.int32), source=name)

    def load(arg: str) -> Dataset:
        if arg:
            raise DataError(f"--data {name} takes no argument (got {name}:{arg})")
        return held

    return register_source(name, load, dataset.num_classes, usage=name, replace=replace)


def _needs_dir(kind: str):
    def check(arg: str) -> None:
        if not arg:
            raise DataError(f"--data {kind} needs a folder: {kind}:DIR")
    return check


for _layout in BINARY.values():
    register_source(f"{_layout.name}-bin", lambda arg, layout=_layout: load_bin(arg, layout), _layout.classes,
                    usage=f"{_layout.name}-bin:DIR", check=_needs_dir(f"{_layout.name}-bin"))
register_source("tfds", lambda arg: load_tfds(arg or None), NUM_CLASSES, usage="tfds[:DATA_DIR]")
def _load_synthetic(arg: str) -> Dataset:
    n_train, n_test, classes = _synthetic_sizes(arg)
    return synthetic(n_train, n_test, classes=classes)


register_source("synthetic", _load_synthetic, lambda arg: _synthetic_sizes(arg)[2],
                usage="synthetic[:N_TRAIN[,N_TEST[,CLASSES]]]", check=_synthetic_sizes)


def check_spec(spec: str) -> tuple[str, str]:
    """Splits a ``--data`` spec into (kind, argument); raises DataError if unknown or malformed."""
    kind, _, arg = spec.partition(":")
    if kind not in SOURCES:
        raise DataError(f"unknown data source {spec!r}: use one of {', '.join(s.usage for s in SOURCES.values())}")
    SOURCES[kind].check(arg)
    return kind, arg


def data_name(spec: str) -> str:
    """A data set's short name for results and titles: the spec's kind, less ``-bin``
    (``cifar10-bin:~/data`` -> ``cifar10``, ``synthetic:512,128`` -> ``synthetic``)."""
    kind = spec.partition(":")[0]
    return kind[: -len("-bin")] if kind.endswith("-bin") else kind


def num_classes(spec: str) -> int:
    """The class count of the data a ``--data`` spec names (nothing is loaded)."""
    kind, arg = check_spec(spec)
    return SOURCES[kind].classes(arg)


def load(spec: str) -> Dataset:
    """Loads the data set a ``--data`` spec names."""
    kind, arg = check_spec(spec)
    return SOURCES[kind].load(arg)


# ---------------------------------------------------------------- on the device


def normalize(images: jax.Array, normalization: str = "cifar10") -> jax.Array:
    """uint8 NHWC -> float32, scaled to [0, 1] then standardised per channel
    by the (mean, std) of `NORMALIZATIONS[normalization]`."""
    mean, std = NORMALIZATIONS[normalization]
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean)) / jnp.asarray(std)


def augment_params(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Per image: crop offsets (n, 2) in [0, 2*PAD] and a flip flag (n,) with p = 0.5."""
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * PAD + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,))
    return offsets, flips


def apply_augment(images: jax.Array, offsets: jax.Array, flips: jax.Array) -> jax.Array:
    """Crops 32x32 at `offsets` from the image zero-padded by PAD, then flips where `flips`."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    crop = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))
    out = crop(padded, offsets)
    return jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, on uint8 images."""
    return apply_augment(images, *augment_params(key, images.shape[0]))


def fingerprint(ds: Dataset) -> str:
    """'<train>+<test>[+<val>] images, sha256 <16 hex>': the counts and a hash of every
    array a run trains and evaluates on (about 0.3 s for CIFAR-10). A run records it;
    resuming on other data is refused."""
    h = hashlib.sha256()
    arrays = [ds.train_images, ds.train_labels, ds.test_images, ds.test_labels]
    if ds.val_labels is not None:
        arrays += [ds.val_images, ds.val_labels]
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    counts = f"{len(ds.train_labels)}+{len(ds.test_labels)}"
    if ds.val_labels is not None:
        counts += f"+{len(ds.val_labels)}"
    return f"{counts} images, sha256 {h.hexdigest()[:16]}"
