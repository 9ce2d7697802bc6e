"""CIFAR-10 as uint8 arrays, from three sources, and on-device augmentation.

Sources (the ``--data`` spec):

- ``cifar10-bin:DIR``: the data set's original binary layout
  (``DIR/cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``; DIR
  may also be that folder itself). Parsed with numpy; nothing is unpickled.
- ``tfds[:DATA_DIR]``: a prepared TensorFlow Datasets ``cifar10``, read with
  ``tfds.data_source`` (no TensorFlow needed to read; it is needed to prepare).
- ``synthetic[:N_TRAIN[,N_TEST]]``: a deterministic, learnable CIFAR-shaped
  set (a fixed pattern per class plus noise), for tests and the smoke preset.

Images are (N, 32, 32, 3) uint8, labels (N,) int32. Augmentation and
normalisation run on the device, inside the jitted train step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxprune.errors import UserError

# torchvision's CIFAR-10 normalisation, as in kuangliu/pytorch-cifar.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
PAD = 4  # pixels of zero padding before the random 32x32 crop
NUM_CLASSES = 10
RECORD_BYTES = 1 + 32 * 32 * 3
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
DEFAULT_CIFAR10_DIR = "~/.cache/cifar10"  # where `jaxprune data cifar10` writes by default


class DataError(UserError):
    """Missing or malformed data; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train and a test split as host arrays."""

    train_images: np.ndarray  # (N, 32, 32, 3) uint8
    train_labels: np.ndarray  # (N,) int32 in [0, 10)
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    val_images: np.ndarray | None = None  # held out of the training split by `with_validation`
    val_labels: np.ndarray | None = None

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


# ---------------------------------------------------------------- specs

SOURCES = ("cifar10-bin:DIR", "tfds[:DATA_DIR]", "synthetic[:N_TRAIN[,N_TEST]]")


def check_spec(spec: str) -> tuple[str, str]:
    """Splits a ``--data`` spec into (kind, argument); raises DataError if unknown."""
    kind, _, arg = spec.partition(":")
    if kind == "cifar10-bin" and arg:
        return kind, arg
    if kind == "tfds":
        return kind, arg
    if kind == "synthetic":
        try:
            sizes = [int(x) for x in arg.split(",")] if arg else []
        except ValueError:
            sizes = [-1]
        if len(sizes) <= 2 and all(n > 0 for n in sizes):
            return kind, arg
        raise DataError(f"bad synthetic spec {spec!r}: use synthetic[:N_TRAIN[,N_TEST]] with positive sizes")
    raise DataError(f"unknown data source {spec!r}: use one of {', '.join(SOURCES)}")


def load(spec: str) -> Dataset:
    """Loads the data set a ``--data`` spec names."""
    kind, arg = check_spec(spec)
    if kind == "cifar10-bin":
        return load_cifar10_bin(arg)
    if kind == "tfds":
        return load_tfds(arg or None)
    sizes = [int(x) for x in arg.split(",")] if arg else []
    n_train = sizes[0] if sizes else 10_000
    n_test = sizes[1] if len(sizes) > 1 else max(1, n_train // 5)
    return synthetic(n_train, n_test)


# ---------------------------------------------------------------- binary layout


def read_cifar10_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 ``.bin`` file: records of 1 label byte + 3,072 pixel bytes (R, G, B planes)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataError(
            f"{path} has {raw.size:,} bytes, not a whole number of 3,073-byte records: "
            "it is truncated or not CIFAR-10 binary; rebuild the data set"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    if labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{path} has labels up to {labels.max()}, outside 0-9: it is not CIFAR-10 binary"
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def write_cifar10_bin(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes images/labels in the binary layout (the inverse of `read_cifar10_bin`)."""
    planes = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], planes], axis=1)
    records.tofile(path)


def cifar10_folder(directory: str | os.PathLike) -> Path:
    """The folder holding the .bin files: DIR/cifar-10-batches-bin if it exists, else DIR."""
    root = Path(os.path.expanduser(str(directory)))
    return root / "cifar-10-batches-bin" if (root / "cifar-10-batches-bin").is_dir() else root


def load_cifar10_bin(directory: str | os.PathLike) -> Dataset:
    root = Path(os.path.expanduser(str(directory)))
    folder = cifar10_folder(root)
    missing = [f for f in (*TRAIN_FILES, TEST_FILE) if not (folder / f).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(
            f"no CIFAR-10 binary data in {root}: missing {missing[0]}{more}. "
            "Expected cifar-10-batches-bin/ (the 'CIFAR-10 binary version'); download it "
            f"with `jaxprune data cifar10 {root}` or use --data synthetic"
        )
    parts = [read_cifar10_bin(folder / f) for f in TRAIN_FILES]
    test_images, test_labels = read_cifar10_bin(folder / TEST_FILE)
    # CIFAR-10's six files hold 10,000 records each: a file cut on a record
    # boundary, or zeroed out, is otherwise valid-looking data.
    counts = {f: len(p[1]) for f, p in zip((*TRAIN_FILES, TEST_FILE), [*parts, (test_images, test_labels)])}
    if len(set(counts.values())) > 1:
        short = min(counts, key=counts.get)
        raise DataError(
            f"{folder / short} has {counts[short]:,} records but the other files up to {max(counts.values()):,}: "
            "it is truncated; rebuild the data set"
        )
    for f, (images, _) in zip((*TRAIN_FILES, TEST_FILE), [*parts, (test_images, test_labels)]):
        if images.size and (images == images.flat[0]).all():
            raise DataError(f"{folder / f} holds one value ({images.flat[0]}) in every pixel: it is not "
                            "CIFAR-10 data (zeroed or damaged); rebuild the data set")
    return Dataset(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        test_images,
        test_labels,
        source=f"cifar10-bin:{root}",
    )


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


def synthetic(n_train: int = 10_000, n_test: int = 2_000, seed: int = 0) -> Dataset:
    """A learnable stand-in for CIFAR-10: per class a fixed smooth colour pattern, plus noise.

    Deterministic in (n_train, n_test, seed). A small ResNet reaches well
    above chance within an epoch or two; noise and random shifts keep it from
    being trivial.
    """
    rng = np.random.default_rng(seed)
    # Low-frequency patterns: random 4x4x3 grids upsampled to 32x32.
    coarse = rng.uniform(-1, 1, (NUM_CLASSES, 4, 4, 3))
    patterns = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)

    def make(n):
        labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
        shifts = rng.integers(-3, 4, (n, 2))
        imgs = np.empty((n, 32, 32, 3), np.float32)
        for i in range(n):
            imgs[i] = np.roll(patterns[labels[i]], tuple(shifts[i]), axis=(0, 1))
        imgs = 128 + 50 * imgs + rng.normal(0, 90, imgs.shape)
        return np.clip(imgs, 0, 255).astype(np.uint8), labels

    train = make(n_train)
    test = make(n_test)
    return Dataset(*train, *test, source=f"synthetic:{n_train},{n_test}")


# ---------------------------------------------------------------- on the device


def normalize(images: jax.Array) -> jax.Array:
    """uint8 NHWC -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(MEAN)) / jnp.asarray(STD)


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
