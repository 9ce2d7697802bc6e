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

The binary layouts and their files are `jaxprune.data.cifar`'s, `Dataset` and
`DataError` are `jaxprune.data.dataset`'s; their names are served here too
(`sources.BINARY`, `sources.Dataset`, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.data.dataset import NUM_CLASSES, DataError, Dataset, fingerprint  # noqa: F401 (served here)
from jaxprune.data.cifar import (  # noqa: F401 (served here)
    BINARY, DEFAULT_CIFAR10_DIR, PIXEL_BYTES, RECORD_BYTES, TEST_FILE, TRAIN_FILES, Archive, BinaryLayout,
    bin_folder, cifar10_folder, load_bin, load_cifar10_bin, read_bin, read_cifar10_bin, write_bin,
    write_cifar10_bin,
)

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
