"""A data set as host arrays (`Dataset`: train, test and an optional validation split, uint8
images and int32 labels), its fingerprint, and `DataError`, the data's one-line user error.

May import runtime only; every name here is served by `jaxprune.data.sources` too.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from jaxprune.runtime.errors import UserError

NUM_CLASSES = 10  # CIFAR-10's; other sources say their own (`num_classes`)


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
