"""Data sources and on-device augmentation."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.data import sources as data


def raw_records(labels, images):
    """CIFAR-10 binary records written by hand: label byte, then R, G and B planes."""
    out = bytearray()
    for label, img in zip(labels, images):
        out.append(label)
        for c in range(3):
            out += img[:, :, c].tobytes()
    return bytes(out)


@pytest.fixture
def bin_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    written = {}
    for name in (*data.TRAIN_FILES, data.TEST_FILE):
        images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 3)
        (folder / name).write_bytes(raw_records(labels, images))
        written[name] = (images, labels)
    return tmp_path, written


def test_binary_reader_round_trips_hand_written_files(bin_dir):
    root, written = bin_dir
    ds = data.load(f"cifar10-bin:{root}")
    train_images = np.concatenate([written[f][0] for f in data.TRAIN_FILES])
    train_labels = np.concatenate([written[f][1] for f in data.TRAIN_FILES])
    np.testing.assert_array_equal(ds.train_images, train_images)
    np.testing.assert_array_equal(ds.train_labels, train_labels)
    np.testing.assert_array_equal(ds.test_images, written[data.TEST_FILE][0])
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    # The folder itself works too, and our writer is the reader's inverse.
    ds2 = data.load_cifar10_bin(root / "cifar-10-batches-bin")
    np.testing.assert_array_equal(ds2.test_labels, written[data.TEST_FILE][1])
    data.write_cifar10_bin(root / "copy.bin", ds.train_images, ds.train_labels)
    assert (root / "copy.bin").read_bytes() == b"".join(
        (root / "cifar-10-batches-bin" / f).read_bytes() for f in data.TRAIN_FILES
    )


def test_binary_reader_rejects_bad_files(bin_dir):
    root, _ = bin_dir
    f = root / "cifar-10-batches-bin" / "data_batch_3.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(data.DataError, match="data_batch_3.bin has 9,214 bytes.*3,073"):
        data.load(f"cifar10-bin:{root}")
    f.write_bytes(raw_records([12], [np.zeros((32, 32, 3), np.uint8)]))
    with pytest.raises(data.DataError, match="labels up to 12"):
        data.load(f"cifar10-bin:{root}")
    # Cut on a record boundary (2 of 3 records) or zeroed out: valid-looking, refused.
    t = root / "cifar-10-batches-bin" / "test_batch.bin"
    whole = t.read_bytes()
    f.write_bytes((root / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes())
    t.write_bytes(whole[: 2 * data.RECORD_BYTES])
    with pytest.raises(data.DataError, match="test_batch.bin has 2 records but the other files up to 3.*truncated"):
        data.load(f"cifar10-bin:{root}")
    t.write_bytes(raw_records([1, 2, 3], [np.zeros((32, 32, 3), np.uint8)] * 3))
    with pytest.raises(data.DataError, match="test_batch.bin holds one value \\(0\\) in every pixel"):
        data.load(f"cifar10-bin:{root}")
    t.write_bytes(whole)
    assert len(data.load(f"cifar10-bin:{root}").test_labels) == 3
    (root / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    f.unlink()
    with pytest.raises(data.DataError, match="missing data_batch_3.bin and 1 more"):
        data.load(f"cifar10-bin:{root}")


def cifar100_records(coarse, fine, images):
    """CIFAR-100 binary records by hand: coarse label byte, fine label byte, then R, G and B planes."""
    out = bytearray()
    for c, f, img in zip(coarse, fine, images):
        out += bytes([c, f])
        for ch in range(3):
            out += img[:, :, ch].tobytes()
    return bytes(out)


def test_cifar100_binary_reads_fine_labels_and_checks_the_split_sizes(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    written = {}
    for name, n in (("train.bin", 10), ("test.bin", 2)):  # 5:1, as 50,000:10,000
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        (folder / name).write_bytes(cifar100_records(fine // 5, fine, images))
        written[name] = (images, fine)
    ds = data.load(f"cifar100-bin:{tmp_path}")
    assert ds.num_classes == 100 and data.num_classes(f"cifar100-bin:{tmp_path}") == 100
    np.testing.assert_array_equal(ds.train_images, written["train.bin"][0])
    np.testing.assert_array_equal(ds.train_labels, written["train.bin"][1])  # the fine label, not the coarse
    np.testing.assert_array_equal(ds.test_labels, written["test.bin"][1])
    assert ds.source == f"cifar100-bin:{tmp_path}" and data.data_name(ds.source) == "cifar100"
    # Our writer is the reader's inverse, coarse byte included.
    data.write_bin(tmp_path / "copy.bin", ds.train_images, ds.train_labels, data.BINARY["cifar100"])
    assert (tmp_path / "copy.bin").read_bytes() == (folder / "train.bin").read_bytes()
    # A test file cut on a record boundary is refused: test.bin should be a fifth of train.bin.
    (folder / "test.bin").write_bytes((folder / "test.bin").read_bytes()[: 3074])
    with pytest.raises(data.DataError, match="test.bin has 1 records but the other files up to 2.*truncated"):
        data.load(f"cifar100-bin:{tmp_path}")
    (folder / "test.bin").write_bytes(cifar100_records([0], [100], [np.ones((32, 32, 3), np.uint8)]))
    with pytest.raises(data.DataError, match="labels up to 100, outside 0-99: it is not CIFAR-100 binary"):
        data.load(f"cifar100-bin:{tmp_path}")
    with pytest.raises(data.DataError, match="no CIFAR-100 binary data in .*missing train.bin.*jaxprune data cifar100"):
        data.load(f"cifar100-bin:{tmp_path / 'elsewhere'}")


def test_synthetic_class_counts_and_registered_arrays():
    ds = data.load("synthetic:40,10,3")
    assert ds.num_classes == 3 and set(ds.train_labels) <= {0, 1, 2} and ds.source == "synthetic:40,10,3"
    assert data.num_classes("synthetic:40,10,3") == 3 and data.num_classes("synthetic:40") == 10
    # Ten classes is today's data, bit for bit.
    np.testing.assert_array_equal(data.load("synthetic:40,10,10").train_images, data.load("synthetic:40,10").train_images)
    own = data.Dataset(ds.train_images, ds.train_labels.astype(np.int64), ds.test_images, ds.test_labels,
                       source="x", num_classes=3)
    try:
        data.register_arrays("mine_for_test", own)
        got = data.load("mine_for_test")
        assert got.num_classes == 3 and got.train_labels.dtype == np.int32 and got.source == "mine_for_test"
        assert data.num_classes("mine_for_test") == 3
        with pytest.raises(data.DataError, match="already registered"):
            data.register_arrays("mine_for_test", own)
        with pytest.raises(data.DataError, match="takes no argument"):
            data.load("mine_for_test:x")
    finally:
        data.SOURCES.pop("mine_for_test", None)
    with pytest.raises(data.DataError, match=r"train_labels must lie in \[0, 2\) \(num_classes\), got 0..2"):
        data.register_arrays("bad", dataclasses.replace(own, num_classes=2))
    with pytest.raises(data.DataError, match="train_images must be uint8"):
        data.register_arrays("bad", dataclasses.replace(own, train_images=own.train_images.astype(np.float32)))
    assert "bad" not in data.SOURCES


@pytest.mark.parametrize("spec", ["mnist", "cifar10-bin", "cifar100-bin", "synthetic:0", "synthetic:a,b", "synthetic:1,2,3,4", "synthetic:9,2,1"])
def test_bad_specs(spec):
    with pytest.raises(data.DataError):
        data.check_spec(spec)


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load(f"tfds:{tmp_path}")
    assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.shape == (12,) and 0 <= ds.test_labels.min() and ds.test_labels.max() < 10


def test_tfds_unprepared_says_what_to_do(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataError, match="needs TensorFlow.*pip install tensorflow.*cifar10-bin"):
        data.load(f"tfds:{tmp_path}")


def test_synthetic_is_deterministic_and_shaped():
    a, b = data.synthetic(64, 16), data.synthetic(64, 16)
    assert a.train_images.shape == (64, 32, 32, 3) and a.test_images.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert set(np.unique(a.train_labels)) <= set(range(10)) and len(np.unique(a.train_labels)) > 5
    assert data.load("synthetic:100").test_images.shape[0] == 20


def test_normalize():
    x = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
    out = np.asarray(data.normalize(x))
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array(data.MEAN)) / np.array(data.STD), rtol=1e-6)


def test_augment_shapes_offsets_flips_determinism():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4000, 32, 32, 3), dtype=np.uint8))
    key = jax.random.key(0)
    offsets, flips = data.augment_params(key, 4000)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    assert offsets.min() == 0 and offsets.max() == 8  # both ends of [0, 8] occur
    assert set(np.unique(offsets)) == set(range(9))
    assert abs(flips.mean() - 0.5) < 4 * (0.25 / 4000) ** 0.5
    out = data.augment(key, images)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, data.augment(key, images))
    assert not np.array_equal(out, data.augment(jax.random.key(1), images))


def test_apply_augment_crops_pads_and_flips():
    img = jnp.arange(32 * 32 * 3, dtype=jnp.int32).reshape(1, 32, 32, 3).astype(jnp.uint8) | 1
    same = data.apply_augment(img, jnp.array([[4, 4]]), jnp.array([False]))
    np.testing.assert_array_equal(same, img)
    shifted = np.asarray(data.apply_augment(img, jnp.array([[0, 8]]), jnp.array([False])))[0]
    assert (shifted[:4] == 0).all() and (shifted[:, 28:] == 0).all()  # zero padding came in
    np.testing.assert_array_equal(shifted[4:, :28], np.asarray(img)[0, :28, 4:])
    flipped = data.apply_augment(img, jnp.array([[4, 4]]), jnp.array([True]))
    np.testing.assert_array_equal(flipped[0], np.asarray(img)[0, :, ::-1])


CIFAR10_DIR = os.environ.get("JAXPRUNE_CIFAR10_DIR")


@pytest.mark.skipif(not CIFAR10_DIR, reason="set JAXPRUNE_CIFAR10_DIR to a folder holding cifar-10-batches-bin/")
def test_real_cifar10_loads():
    ds = data.load(f"cifar10-bin:{CIFAR10_DIR}")
    assert ds.train_images.shape == (50000, 32, 32, 3) and ds.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    # Per-channel means of the training set, as torchvision's constants say.
    np.testing.assert_allclose(ds.train_images.mean((0, 1, 2)) / 255, data.MEAN, atol=2e-3)


def test_fingerprint_sees_every_array_and_count():
    ds = data.synthetic(64, 16)
    fp = data.fingerprint(ds)
    assert fp.startswith("64+16 images, sha256 ") and len(fp.split()[-1]) == 16
    assert data.fingerprint(data.synthetic(64, 16)) == fp  # deterministic
    changed = dataclasses.replace(ds, test_images=ds.test_images.copy())
    changed.test_images[3, 1, 2, 0] ^= 1  # one bit of one test pixel
    assert data.fingerprint(changed) != fp
    assert data.fingerprint(ds.with_validation(8)).startswith("56+16+8 images")
