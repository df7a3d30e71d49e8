"""experiments.data: loaders on generated files in every format, checksums and
errors, data-directory resolution, the digits split, seeded batches and
subsets; and the known facts of the real MNIST / CIFAR-10 copies when the
project's shared data folder is there (skipped otherwise)."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from experiments import data as D

pytestmark = pytest.mark.cpu_only  # host-bound: data loaders (host-side by design)

# the real MNIST / CIFAR-10, where $TINYGRAD2_DATA (the variable the CLI reads) points
SHARED = Path(os.environ.get("TINYGRAD2_DATA") or "/nonexistent-TINYGRAD2_DATA-is-unset")


def md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- generated MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train=30, n_test=12, seed=0):
    """Tiny MNIST in the original format; returns (arrays, checksums)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(a), mtime=0))
    return arrays, {name: md5(folder / name) for name in arrays}


def test_mnist_loader_on_generated_files(tmp_path):
    arrays, sums = write_mnist(tmp_path / "mnist")
    data = D.load_mnist(tmp_path, checksums=sums)
    assert data.train.X.shape == (30, 28, 28) and data.test.X.shape == (12, 28, 28)
    assert data.train.X.dtype == np.float32 and data.train.y.dtype == np.int64
    np.testing.assert_array_equal(data.train.X, arrays["train-images-idx3-ubyte.gz"] / np.float32(255))
    np.testing.assert_array_equal(data.test.y, arrays["t10k-labels-idx1-ubyte.gz"])
    assert data.val is None and 0.0 <= data.train.X.min() and data.train.X.max() <= 1.0


def test_mnist_files_directly_in_the_data_dir(tmp_path):
    _, sums = write_mnist(tmp_path)
    assert len(D.load_mnist(tmp_path, checksums=sums).train) == 30


def test_mnist_checksum_mismatch_names_the_file(tmp_path):
    _, sums = write_mnist(tmp_path / "mnist")
    sums["t10k-labels-idx1-ubyte.gz"] = "0" * 32
    with pytest.raises(D.ChecksumError) as err:
        D.load_mnist(tmp_path, checksums=sums)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "0" * 32 in message
    assert md5(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz") in message
    assert "download_mnist" in message


def test_published_checksums_reject_generated_files(tmp_path):
    write_mnist(tmp_path / "mnist")
    with pytest.raises(D.ChecksumError, match="f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        D.load_mnist(tmp_path)


def test_missing_mnist_file_says_how_to_get_it(tmp_path):
    _, sums = write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(D.DataNotFoundError) as err:
        D.load_mnist(tmp_path, checksums=sums)
    message = str(err.value)
    assert "train-labels-idx1-ubyte.gz" in message and "train-images" not in message.split("not found")[0]
    assert "python -m experiments.download mnist" in message and "--data-dir" in message


@pytest.mark.parametrize("raw, match", [
    (b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(19),
     "header says shape"),
    (b"\x12\x34\x08\x03" + bytes(12), "bad IDX magic number 0x12340803"),
    (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes(3), "declares 1 dimensions, expected 3"),
    (b"\x00\x00\x08\x03" + bytes(5), "truncated IDX header"),
])
def test_idx_header_errors(raw, match):
    with pytest.raises(D.DataFormatError, match=match):
        D.read_idx(raw, name="train-images", ndim=3)


def test_idx_reads_other_dtypes():
    a = np.arange(6, dtype=">i4").reshape(2, 3)
    raw = bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + a.tobytes()
    np.testing.assert_array_equal(D.read_idx(raw), a)


def test_mnist_bad_gzip_is_a_format_error(tmp_path):
    _, sums = write_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    sums[path.name] = md5(path)
    with pytest.raises(D.DataFormatError, match="train-images-idx3-ubyte.gz: not a valid gzip file"):
        D.load_mnist(tmp_path, checksums=sums)


# ---------------------------------------------------------------- generated CIFAR-10


BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def cifar_arrays(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return {b: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)) for b in BATCHES}


def binary_batch(X, y) -> bytes:
    return np.concatenate([y.astype(np.uint8)[:, None], X.reshape(len(y), -1)], axis=1).tobytes()


def python_batch(X, y, old_numpy_names=True) -> bytes:
    """Pickled like the original release (protocol 2, bytes keys, numpy.core names)."""
    d = {b"batch_label": b"generated", b"labels": [int(v) for v in y],
         b"data": X.reshape(len(y), -1), b"filenames": [b"img_%d.png" % i for i in range(len(y))]}
    raw = pickle.dumps(d, protocol=2)
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if old_numpy_names else raw


def write_cifar(folder: Path, arrays, layout: str) -> dict:
    """Write generated CIFAR-10 in one layout; returns the checksums of what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    if layout in ("bin-flat", "bin-dir", "bin-tar"):
        files = {f"{b}.bin": binary_batch(*arrays[b]) for b in BATCHES}
        files["batches.meta.txt"] = "\n".join(D.CIFAR10_CLASSES).encode()
        sub = "cifar-10-batches-bin"
    else:
        files = {b: python_batch(*arrays[b], old_numpy_names=(b != "test_batch")) for b in BATCHES}
        sub = "cifar-10-batches-py"
    if layout.endswith("tar"):
        name = "cifar-10-binary.tar.gz" if layout == "bin-tar" else "cifar-10-python.tar.gz"
        with tarfile.open(folder / name, "w:gz") as tar:
            for fname, raw in files.items():
                info = tarfile.TarInfo(f"{sub}/{fname}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        return {name: md5(folder / name)}
    target = folder if layout == "bin-flat" else folder / sub
    target.mkdir(parents=True, exist_ok=True)
    for fname, raw in files.items():
        (target / fname).write_bytes(raw)
    return {fname: md5(target / fname) for fname in files}


@pytest.mark.parametrize("layout", ["bin-flat", "bin-dir", "bin-tar", "py-dir", "py-tar"])
def test_cifar_loader_in_every_layout(tmp_path, layout):
    arrays = cifar_arrays()
    sums = write_cifar(tmp_path / "cifar10", arrays, layout)
    data = D.load_cifar10(tmp_path, checksums=sums)
    assert data.train.X.shape == (35, 3, 32, 32) and data.test.X.shape == (7, 3, 32, 32)
    expected_X = np.concatenate([arrays[b][0] for b in BATCHES[:5]]) / np.float32(255)
    np.testing.assert_array_equal(data.train.X, expected_X)
    np.testing.assert_array_equal(data.train.y, np.concatenate([arrays[b][1] for b in BATCHES[:5]]))
    np.testing.assert_array_equal(data.test.y, arrays["test_batch"][1])
    assert data.info["version"] == ("binary" if layout.startswith("bin") else "python")
    assert data.classes[0] == "airplane" and data.train.y.dtype == np.int64


def test_cifar_binary_record_layout():
    """1 label byte, then 1024 R, 1024 G, 1024 B bytes, each plane row-major."""
    record = np.zeros(1 + 3072, dtype=np.uint8)
    record[0] = 7
    record[1 + 32] = 11             # R, row 1, column 0
    record[1 + 1024 + 5] = 22       # G, row 0, column 5
    record[1 + 2048 + 3 * 32 + 2] = 33  # B, row 3, column 2
    X, y = D.parse_cifar_binary(record.tobytes())
    assert y.tolist() == [7] and X.shape == (1, 3, 32, 32)
    assert (X[0, 0, 1, 0], X[0, 1, 0, 5], X[0, 2, 3, 2]) == (11, 22, 33) and X.sum() == 66


def test_cifar_version_choice_and_tarball_checksum(tmp_path):
    arrays = cifar_arrays()
    sums = write_cifar(tmp_path, arrays, "bin-tar")
    sums.update(write_cifar(tmp_path, cifar_arrays(seed=1), "py-tar"))
    binary = D.load_cifar10(tmp_path, checksums=sums)
    python = D.load_cifar10(tmp_path, version="python", checksums=sums)
    np.testing.assert_array_equal(binary.test.y, arrays["test_batch"][1])
    assert not np.array_equal(binary.test.X, python.test.X)
    sums["cifar-10-binary.tar.gz"] = "f" * 32
    with pytest.raises(D.ChecksumError, match="cifar-10-binary.tar.gz") as err:
        D.load_cifar10(tmp_path, checksums=sums)
    assert "download_cifar10" in str(err.value)


def test_cifar_extracted_batch_checksum_mismatch(tmp_path):
    sums = write_cifar(tmp_path / "cifar10", cifar_arrays(), "bin-flat")
    with pytest.raises(D.ChecksumError, match="data_batch_1.bin.*5dd7e06a14cb22eb9f671a540d1b7c25"):
        D.load_cifar10(tmp_path)  # the published MD5s of the original batches
    sums["data_batch_4.bin"] = "a" * 32
    with pytest.raises(D.ChecksumError, match="data_batch_4.bin"):
        D.load_cifar10(tmp_path, checksums=sums)


def test_cifar_missing_batch_and_missing_everything(tmp_path):
    sums = write_cifar(tmp_path / "cifar10", cifar_arrays(), "bin-flat")
    (tmp_path / "cifar10" / "test_batch.bin").unlink()
    with pytest.raises(D.DataNotFoundError, match="test_batch.bin not found"):
        D.load_cifar10(tmp_path, checksums=sums)
    with pytest.raises(D.DataNotFoundError, match="cifar-10-binary.tar.gz.*python -m experiments.download cifar10"):
        D.load_cifar10(tmp_path / "empty")


def test_cifar_bad_files_are_format_errors(tmp_path):
    with pytest.raises(D.DataFormatError, match="not a whole number of 3073-byte records"):
        D.parse_cifar_binary(bytes(3073 * 2 + 5), name="data_batch_1.bin")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(D.DataFormatError, match="refusing to load .*print"):
        D.parse_cifar_pickle(pickle.dumps({b"data": Evil()}, protocol=2), name="data_batch_1")
    with pytest.raises(D.DataFormatError, match="'data' and 'labels'"):
        D.parse_cifar_pickle(pickle.dumps({b"labels": [1]}, protocol=2))


# ---------------------------------------------------------------- data directory


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.resolve_data_dir() == tmp_path / "xdg" / "tinygrad2"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert D.resolve_data_dir() == Path.home() / ".cache" / "tinygrad2"
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env"))
    assert D.resolve_data_dir() == tmp_path / "env"
    assert D.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_loader_uses_the_environment_variable(tmp_path, monkeypatch):
    _, sums = write_mnist(tmp_path / "mnist")
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path))
    assert len(D.load("mnist", checksums=sums).test) == 12
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        D.load("imagenet")


# ---------------------------------------------------------------- digits, splits, batches


def test_digits_fixed_split():
    a, b = D.load_digits(), D.load_digits()
    assert a.sizes == {"train": 1257, "val": 270, "test": 270} == D.DIGITS_SPLIT
    assert a.train.X.shape == (1257, 8, 8) and a.train.X.dtype == np.float32
    assert 0.0 <= a.train.X.min() and a.train.X.max() <= 1.0
    parts = [a.train.index, a.val.index, a.test.index]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1797))  # disjoint and complete
    for d1, d2 in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        np.testing.assert_array_equal(d1.index, d2.index)
        np.testing.assert_array_equal(d1.X, d2.X)
    # the split is pinned: a change here changes every digits result
    assert hashlib.sha256(a.test.index.tobytes() + a.val.index.tobytes()).hexdigest()[:16] == DIGITS_SPLIT_DIGEST
    full = np.bincount(np.concatenate([a.train.y, a.val.y, a.test.y]))
    for split in (a.val, a.test):
        assert np.all(np.abs(split.class_counts() - full * 270 / 1797) < 1)  # stratified
    other = D.load_digits(seed=1)
    assert not np.array_equal(other.test.index, a.test.index)


DIGITS_SPLIT_DIGEST = "7182949d96a65ef6"  # sha256(test.index + val.index), seed 0


def toy(n=103, classes=5, seed=0, shape=(2, 3)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.random((n, *shape), dtype=np.float32)
    return D.Dataset("toy", X, y, tuple(str(c) for c in range(classes)))


def test_batches_are_seeded_and_cover_each_example_once():
    d = toy()
    first = d.batch_indices(10, seed=3, epoch=2)
    assert [len(b) for b in first] == [10] * 10 + [3]
    assert sorted(np.concatenate(first).tolist()) == list(range(103))
    again = d.batch_indices(10, seed=3, epoch=2)
    assert all(np.array_equal(u, v) for u, v in zip(first, again))
    assert not np.array_equal(np.concatenate(first), np.concatenate(d.batch_indices(10, seed=3, epoch=3)))
    assert not np.array_equal(np.concatenate(first), np.concatenate(d.batch_indices(10, seed=4, epoch=2)))
    batches = list(d.batches(10, seed=3, epoch=2))
    for (X, y), idx in zip(batches, first):
        np.testing.assert_array_equal(X, d.X[idx])
        np.testing.assert_array_equal(y, d.y[idx])
    resumed = list(d.batches(10, seed=3, epoch=2, start=4))  # a run resumed after 4 batches
    assert len(resumed) == 7 and all(np.array_equal(r[1], b[1]) for r, b in zip(resumed, batches[4:]))
    dropped = d.batch_indices(10, seed=3, epoch=2, drop_last=True)
    assert len(dropped) == 10 == d.num_batches(10, drop_last=True) and d.num_batches(10) == 11
    (full,) = d.batch_indices(None, seed=0, epoch=0)
    assert sorted(full.tolist()) == list(range(103))
    assert np.array_equal(d.batch_indices(10, shuffle=False)[0], np.arange(10))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        d.batch_indices(0)


def test_subset_sizes_disjointness_and_strata():
    d = toy(n=500)
    splits = D.Splits("toy", d, None, toy(n=200, seed=1))
    s = splits.subset(100, 50, 40, seed=7)
    assert s.sizes == {"train": 100, "val": 50, "test": 40}
    assert not set(s.train.index) & set(s.val.index)  # val carved from train, disjoint
    for part, source, n in ((s.train, d, 100), (s.val, d, 50), (s.test, splits.test, 40)):
        expected = source.class_counts() * n / len(source)
        assert np.all(np.abs(part.class_counts() - expected) < 1)
        np.testing.assert_array_equal(part.X, source.X[part.index])
    again = splits.subset(100, 50, 40, seed=7)
    assert np.array_equal(again.train.index, s.train.index) and np.array_equal(again.test.index, s.test.index)
    assert not np.array_equal(splits.subset(100, 50, 40, seed=8).train.index, s.train.index)
    balanced = splits.subset(100, 20, None, seed=0, stratify="balanced")
    assert balanced.train.class_counts().tolist() == [20] * 5 and balanced.val.class_counts().tolist() == [4] * 5
    assert len(balanced.test) == 200
    rest = splits.subset(None, 50, None, seed=0)  # a validation split carved from train, the rest kept
    assert len(rest.train) == 450 and sorted(np.r_[rest.train.index, rest.val.index].tolist()) == list(range(500))
    assert s.info["subset"] == {"n_train": 100, "n_val": 50, "n_test": 40, "seed": 7, "stratify": "proportional"}
    with pytest.raises(ValueError, match="cannot draw 600 examples from 500"):
        splits.subset(600)
    with pytest.raises(ValueError, match="class .* needs"):
        splits.subset(495, stratify="balanced")


def test_subset_keeps_an_existing_validation_split():
    digits = D.load_digits()
    s = digits.subset(100, 30, 30, seed=0)
    assert set(s.val.index) <= set(digits.val.index) and set(s.train.index) <= set(digits.train.index)


def test_normalize_uses_train_statistics():
    rng = np.random.default_rng(0)
    X = (rng.random((64, 3, 4, 4)) * np.array([1, 2, 3])[None, :, None, None] + 5).astype(np.float32)
    y = rng.integers(0, 2, 64)
    tr = D.Dataset("t/train", X[:48], y[:48], ("a", "b"))
    te = D.Dataset("t/test", X[48:], y[48:], ("a", "b"))
    n = D.Splits("t", tr, None, te).normalize()
    np.testing.assert_allclose(n.train.X.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(n.train.X.std(axis=(0, 2, 3)), 1, atol=1e-5)
    mean, std = np.array(n.info["normalization"]["mean"]), np.array(n.info["normalization"]["std"])
    np.testing.assert_allclose(n.test.X, (X[48:] - mean[:, None, None]) / std[:, None, None], rtol=1e-5, atol=1e-5)
    g = D.Splits("t", tr, None, te).normalize(per="global")
    assert len(g.info["normalization"]["mean"]) == 1
    with pytest.raises(ValueError, match="already normalized"):
        n.normalize()


def test_dataset_record_checks_and_reshape():
    d = toy(shape=(2, 3))
    assert d.reshape(-1).sample_shape == (6,) and d.reshape(1, 2, 3).X.shape == (103, 1, 2, 3)
    assert "Dataset('toy', X (103, 2, 3) float32" in repr(d)
    with pytest.raises(ValueError, match="X has 3 rows but y has 2"):
        D.Dataset("bad", np.zeros((3, 2)), np.zeros(2, dtype=np.int64))


# ---------------------------------------------------------------- the real files (skipped without them)


needs_mnist = pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason=f"no real MNIST at {SHARED / 'mnist'} (set TINYGRAD2_DATA)")
needs_cifar = pytest.mark.skipif(not (SHARED / "cifar10").is_dir(), reason=f"no real CIFAR-10 at {SHARED / 'cifar10'} (set TINYGRAD2_DATA)")


@pytest.fixture(scope="module")
def mnist():
    return D.load_mnist(SHARED)


@pytest.fixture(scope="module")
def cifar():
    return D.load_cifar10(SHARED)


@needs_mnist
def test_real_mnist_known_facts(mnist):
    assert mnist.train.X.shape == (60000, 28, 28) and mnist.test.X.shape == (10000, 28, 28)
    assert mnist.train.class_counts().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    mean, std = D.channel_stats(mnist.train.X)
    assert (round(float(mean[0]), 4), round(float(std[0]), 4)) == (0.1307, 0.3081)


@needs_mnist
def test_real_mnist_2pct_split(mnist, monkeypatch):
    monkeypatch.setattr(D, "load_mnist", lambda *a, **k: mnist)
    s = D.mnist_2pct(SHARED, seed=0)
    assert s.sizes == {"train": 1200, "val": 200, "test": 200}
    assert s.train.class_counts().tolist() == [120] * 10
    assert s.val.class_counts().tolist() == [20] * 10 and s.test.class_counts().tolist() == [20] * 10
    assert not set(s.train.index) & set(s.val.index)
    np.testing.assert_array_equal(s.train.X, mnist.train.X[s.train.index])
    assert np.array_equal(D.mnist_2pct(SHARED, seed=0).train.index, s.train.index)
    assert not np.array_equal(D.mnist_2pct(SHARED, seed=1).train.index, s.train.index)


@needs_cifar
def test_real_cifar10_known_facts(cifar):
    assert cifar.train.X.shape == (50000, 3, 32, 32) and cifar.test.X.shape == (10000, 3, 32, 32)
    assert cifar.train.class_counts().tolist() == [5000] * 10 and cifar.test.class_counts().tolist() == [1000] * 10
    assert cifar.train.y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    mean, std = D.channel_stats(cifar.train.X)
    assert np.round(mean, 4).tolist() == [0.4914, 0.4822, 0.4465]
    assert np.round(std, 4).tolist() == [0.2470, 0.2435, 0.2616]
