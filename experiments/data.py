"""Data sets: loaders with checksums, an embedded default, splits, seeded mini-batches.

Three sources, one result. Each loader returns a :class:`Splits` (``train``,
``val`` (or ``None``), ``test``), each a :class:`Dataset` record: ``X``
float32 in [0, 1] (until :meth:`Splits.normalize`), ``y`` int64, a name, the
class names and where every example came from (``index``: its position in the
original split)::

    data = load("digits")                          # embedded, no download
    data = load("mnist", data_dir="~/data")        # X (60000, 28, 28) / (10000, 28, 28)
    data = load("cifar10")                         # X (50000, 3, 32, 32) / (10000, 3, 32, 32)
    data = mnist_2pct(seed=0)                      # 1,200 / 200 / 200, 120 / 20 / 20 per class
    data = data.normalize()                        # per-channel mean/std of train, applied to all
    for X, y in data.train.batches(128, seed=0, epoch=3): ...

Data directory. ``data_dir`` argument (the CLI's ``--data-dir``) > the
environment variable ``TINYGRAD2_DATA`` > ``$XDG_CACHE_HOME/tinygrad2``
(default ``~/.cache/tinygrad2``). In it the files may lie directly, or in
``mnist/`` and ``cifar10/`` subfolders (what :mod:`experiments.download`
writes, and the layout of the project's shared copy).

* MNIST: the four original IDX files, gzip-compressed
  (``train-images-idx3-ubyte.gz``, ...), headers checked (magic number, dims).
* CIFAR-10, either version, extracted or not: the *binary* version
  (``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``: records of
  1 label byte + 3072 pixel bytes, R then G then B planes, row-major; flat in
  the folder or in ``cifar-10-batches-bin/``), the *python* version
  (``cifar-10-batches-py/data_batch_1`` .. pickles, read with an unpickler
  that admits only NumPy arrays, lists and bytes), or either tarball
  (``cifar-10-binary.tar.gz``, ``cifar-10-python.tar.gz``) read in place with
  :mod:`tarfile`. Search order: extracted binary, extracted python, binary
  tarball, python tarball (``version=`` restricts it).
* digits: scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside
  scikit-learn, so nothing is downloaded), X (N, 8, 8) scaled by 1/16, with
  the FIXED split below.

Checksums. Every original file is checked against its published MD5 (the
tarballs, the MNIST files, the extracted batches of both CIFAR versions);
a mismatch raises :class:`ChecksumError` naming the file, both checksums and
how to get the file again; a missing file raises :class:`DataNotFoundError`
naming the file, the folders searched and the download command.

Randomness. Every random choice (splits, subsets, batch order) is a
permutation ``argsort`` of uniform draws from NumPy's PCG64 seeded by a
``SeedSequence`` of small integers: uniform doubles from PCG64 are a stable
stream across NumPy versions (bounded-integer algorithms have changed in the
past), so a seed names the same split everywhere.

The digits split (seed 0): 270 test, then 270 validation from the rest, then
the remaining 1,257 for training, each drawn stratified (per-class counts
proportional to the class sizes, largest remainder, ties to the lower class).

Batches. ``Dataset.batches(batch_size, seed=s, epoch=e)`` visits every example
exactly once per epoch in an order that depends only on (s, e): a run resumed
at epoch e (and batch b, with ``start=b``) sees exactly the batches it would
have seen.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np  # host-side only: file parsing, splits, batch indices; the device sees data via to_device

from tinygrad2 import backend as B

ENV_VAR = "TINYGRAD2_DATA"

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_TAR_MD5 = {
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
}
CIFAR10_BIN_MD5 = {  # the extracted binary batches (the MD5SUMS of the original release)
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
CIFAR10_PY_MD5 = {  # the extracted python batches
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_SPLIT = {"train": 1257, "val": 270, "test": 270}
CIFAR10_BATCH_RECORDS = 10_000  # images in each of the six batch files of the release

_SUBFOLDER = {"mnist": "mnist", "cifar10": "cifar10"}


# ---------------------------------------------------------------- errors


class DataError(Exception):
    """Base class of the data errors."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file is missing (the message says where it was looked for and how to get it)."""


class ChecksumError(DataError, ValueError):
    """A file's MD5 differs from the published one."""


class DataFormatError(DataError, ValueError):
    """A file's content does not have the expected format."""


def how_to_get(dataset: str, root=None) -> str:
    """The sentence every missing-file or bad-checksum error ends with."""
    where = resolve_data_dir(root)
    version = ", version='binary'" if dataset == "cifar10" else ""
    return (
        f"get it with `python -m experiments.download {dataset} --data-dir {where}` "
        f"(or experiments.download.download_{dataset}('{where}'{version})), or point --data-dir "
        f"or ${ENV_VAR} at a folder that has it (directly or in a '{_SUBFOLDER[dataset]}/' subfolder)"
    )


# ---------------------------------------------------------------- where the data lives


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/tinygrad2``, or ``~/.cache/tinygrad2``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "tinygrad2"


def resolve_data_dir(data_dir=None) -> Path:
    """Explicit argument > ``$TINYGRAD2_DATA`` > :func:`default_data_dir`."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return default_data_dir()


def _search_dirs(root: Path, dataset: str) -> list[Path]:
    return [root / _SUBFOLDER[dataset], root]


def md5sum(path, chunk_size=1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path, expected: str, *, dataset: str, root=None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has MD5 ``expected``."""
    actual = md5sum(path)
    if actual != expected:
        raise ChecksumError(
            f"{dataset}: checksum mismatch for {path}: MD5 is {actual}, expected {expected} (the "
            f"published checksum of the original {Path(path).name}); the file is corrupt or not the "
            f"original. Delete it and {how_to_get(dataset, root)}"
        )


# ---------------------------------------------------------------- records


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split: ``X`` (N, *sample_shape) floating, ``y`` (N,) int64.

    ``index`` holds each example's position in the original split it came
    from (the file's order), so subsets and splits can be traced and
    recorded. Arrays are host NumPy arrays until :meth:`to_device`."""

    name: str
    X: object
    y: object
    classes: tuple = ()
    index: np.ndarray | None = None

    def __post_init__(self):
        if len(self.X) != len(self.y):
            raise ValueError(f"Dataset {self.name!r}: X has {len(self.X)} rows but y has {len(self.y)}")
        if self.y.ndim != 1:
            raise ValueError(f"Dataset {self.name!r}: y must be 1-D, got shape {tuple(self.y.shape)}")
        if self.index is not None and len(self.index) != len(self.y):
            raise ValueError(f"Dataset {self.name!r}: index has {len(self.index)} entries for {len(self.y)} rows")

    def __len__(self):
        return len(self.y)

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.X.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(B.to_host(self.y).max()) + 1

    def class_counts(self) -> np.ndarray:
        """(num_classes,) number of examples of each class."""
        return np.bincount(B.to_host(self.y), minlength=self.num_classes)

    def take(self, idx, name=None) -> "Dataset":
        """The examples at host positions ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        dev = idx if isinstance(self.X, np.ndarray) else B.to_device(idx)
        index = idx if self.index is None else self.index[idx]
        return Dataset(name or self.name, self.X[dev], self.y[dev], self.classes, index)

    def reshape(self, *sample_shape) -> "Dataset":
        """Same examples, each reshaped (e.g. ``reshape(1, 28, 28)`` for a conv net, ``reshape(-1)`` to flatten)."""
        return Dataset(self.name, self.X.reshape(len(self), *sample_shape), self.y, self.classes, self.index)

    def to_device(self) -> "Dataset":
        """The explicit host-to-device move of X and y (a no-op on the NumPy backend)."""
        return Dataset(self.name, B.to_device(self.X), B.to_device(self.y), self.classes, self.index)

    # ---- mini-batches

    def num_batches(self, batch_size=None, drop_last=False) -> int:
        if batch_size is None:
            return 1
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batch_indices(self, batch_size=None, *, seed=0, epoch=0, shuffle=True, drop_last=False) -> list:
        """The host index arrays of one epoch's batches; depends only on
        (len, batch_size, seed, epoch, shuffle, drop_last). ``batch_size=None``
        is one full batch."""
        n = len(self)
        if batch_size is not None and (isinstance(batch_size, (bool, np.bool_))
                                       or not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
            raise ValueError(f"Dataset.batches: batch_size must be a positive int or None, got {batch_size!r}")
        if n == 0:
            raise ValueError(f"Dataset.batches: {self.name!r} has no examples (X of shape {tuple(self.X.shape)}), "
                             f"so it has no batches; check how the split was made (e.g. Splits.subset sizes)")
        order = permutation(np.random.default_rng([seed, epoch]), n) if shuffle else np.arange(n)
        if batch_size is None:
            return [order]
        stop = n - n % batch_size if drop_last else n
        return [order[i:i + batch_size] for i in range(0, stop, batch_size)]

    def batches(self, batch_size=None, *, seed=0, epoch=0, shuffle=True, drop_last=False, start=0):
        """Iterate over ``(X_batch, y_batch)`` for one epoch; ``start`` skips
        the first batches (to resume mid-epoch). Arrays live where ``X`` lives.
        The arguments are checked here, when called, not at the first batch."""
        on_host = isinstance(self.X, np.ndarray)
        indices = self.batch_indices(batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)
        if not indices:
            raise ValueError(f"Dataset.batches: {self.name!r} has {len(self)} examples, fewer than one batch of "
                             f"{batch_size} with drop_last=True")
        return ((self.X[i], self.y[i]) for i in (idx if on_host else B.to_device(idx) for idx in indices[start:]))

    def __repr__(self):
        return (f"Dataset({self.name!r}, X {tuple(self.X.shape)} {self.X.dtype}, "
                f"y {tuple(self.y.shape)} {self.y.dtype}, {self.num_classes} classes)")


@dataclass(frozen=True, eq=False)
class Splits:
    """train / val (or None) / test of one data set, plus ``info``: where the
    data came from and what was done to it (source, subset, normalization),
    ready to be stored in a results file's config."""

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    info: dict = field(default_factory=dict)

    @property
    def classes(self):
        return self.train.classes

    @property
    def sizes(self) -> dict:
        return {"train": len(self.train), "val": 0 if self.val is None else len(self.val), "test": len(self.test)}

    def _map(self, fn, name=None, **info):
        return Splits(name or self.name, fn(self.train), None if self.val is None else fn(self.val),
                      fn(self.test), {**self.info, **info})

    def reshape(self, *sample_shape) -> "Splits":
        return self._map(lambda d: d.reshape(*sample_shape))

    def to_device(self) -> "Splits":
        return self._map(Dataset.to_device)

    def normalize(self, per="channel", eps=1e-12) -> "Splits":
        """Subtract the train mean and divide by the train std, per channel
        (axis 1 of (N, C, H, W) data; one channel for anything else) or
        ``per="global"``; the statistics go into ``info["normalization"]``."""
        if "normalization" in self.info:
            raise ValueError(f"Splits.normalize: {self.name!r} is already normalized")
        mean, std = channel_stats(self.train.X, per=per)
        shape = (1, -1, 1, 1) if mean.size > 1 else (1,)
        m = mean.astype(np.float32).reshape(shape)
        s = np.maximum(std, eps).astype(np.float32).reshape(shape)
        if not isinstance(self.train.X, np.ndarray):
            m, s = B.to_device(m), B.to_device(s)

        def norm(d):
            X = d.X - m  # one new float32 array, then in place
            X /= s
            return Dataset(d.name, X, d.y, d.classes, d.index)

        return self._map(norm, normalization={"per": per, "mean": mean.tolist(), "std": std.tolist()})

    def subset(self, n_train=None, n_val=None, n_test=None, *, seed=0, stratify="proportional", name=None):
        """Draw a seeded subset: ``n_test`` from test, ``n_val`` from val (or,
        when there is no val split, from train, disjoint from the training
        examples), ``n_train`` from train; ``None`` keeps all (of what
        remains). ``stratify``: "proportional" (class counts proportional to
        the pool's), "balanced" (equal counts; a remainder goes to classes
        drawn by the seed) or None (uniform)."""
        if stratify not in ("proportional", "balanced", None):
            raise ValueError(f"Splits.subset: stratify must be 'proportional', 'balanced' or None, got {stratify!r}")
        for what, n, low in (("n_train", n_train, 1), ("n_val", n_val, 0), ("n_test", n_test, 0)):
            if n is not None and (isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < low):
                raise ValueError(f"Splits.subset: {what} must be None or an int >= {low}"
                                 + (" (a training split needs examples)" if low else "") + f", got {n!r}")
        rngs = [np.random.default_rng([seed, k]) for k in range(3)]
        pick = lambda d, pool, n, rng: stratified_pick(d.y, n, rng, stratify, pool=pool, what=d.name)  # noqa: E731
        test = self.test if n_test is None else self.test.take(pick(self.test, None, n_test, rngs[2]))
        if self.val is not None:
            val = self.val if n_val is None else self.val.take(pick(self.val, None, n_val, rngs[1]))
            pool = np.arange(len(self.train))
        elif n_val:
            val_idx = pick(self.train, None, n_val, rngs[1])
            val = self.train.take(val_idx, name=f"{self.name}/val")
            pool = np.setdiff1d(np.arange(len(self.train)), val_idx)
        else:
            val, pool = None, np.arange(len(self.train))
        train = self.train.take(pool if n_train is None else pick(self.train, pool, n_train, rngs[0]))
        record = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed, "stratify": stratify}
        return Splits(name or f"{self.name}[subset]", train, val, test, {**self.info, "subset": record})

    def __repr__(self):
        parts = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"Splits({self.name!r}, {parts}, sample {self.train.sample_shape}, {len(self.classes)} classes)"


# ---------------------------------------------------------------- seeded selection


def permutation(rng, n) -> np.ndarray:
    """A random permutation of range(n) as the argsort of n uniform doubles
    (stable across NumPy versions, unlike bounded-integer shuffles)."""
    return np.argsort(rng.random(n), kind="stable")


def _largest_remainder(weights, n) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``n``; ties go to the lower index."""
    weights = np.asarray(weights, dtype=np.float64)
    quota = weights * n / weights.sum()
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def stratified_pick(y, n, rng, stratify="proportional", pool=None, what="data") -> np.ndarray:
    """Sorted positions of ``n`` examples drawn from ``pool`` (default: all)
    with per-class counts set by ``stratify`` (see :meth:`Splits.subset`)."""
    y = B.to_host(y)
    pool = np.arange(len(y)) if pool is None else np.asarray(pool, dtype=np.int64)
    if not (isinstance(n, (int, np.integer)) and 0 <= n <= len(pool)):
        raise ValueError(f"subset of {what}: cannot draw {n!r} examples from {len(pool)}")
    if stratify is None:
        return np.sort(pool[permutation(rng, len(pool))[:n]])
    labels = y[pool]
    classes, counts = np.unique(labels, return_counts=True)
    if stratify == "proportional":
        want = _largest_remainder(counts, n)
    else:
        want = np.full(len(classes), n // len(classes), dtype=np.int64)
        want[permutation(rng, len(classes))[: n % len(classes)]] += 1
    chosen = []
    for c, k, have in zip(classes, want, counts):
        if k > have:
            raise ValueError(f"subset of {what}: class {c} needs {k} examples but the pool has {have}")
        members = pool[labels == c]
        chosen.append(members[permutation(rng, len(members))[:k]])
    return np.sort(np.concatenate(chosen))


def channel_stats(X, per="channel", chunk=2048):
    """(mean, std) as float64 arrays: per channel (axis 1) for (N, C, H, W)
    data, else one value; population std, accumulated in float64 in chunks."""
    if per not in ("channel", "global"):
        raise ValueError(f"channel_stats: per must be 'channel' or 'global', got {per!r}")
    X = B.to_host(X)
    channels = X.shape[1] if per == "channel" and X.ndim == 4 else 1
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for i in range(0, len(X), chunk):
        block = X[i:i + chunk].astype(np.float64).reshape(len(X[i:i + chunk]), channels, -1)
        total += block.sum(axis=(0, 2))
        squares += np.square(block).sum(axis=(0, 2))
    count = X.size // channels
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))


# ---------------------------------------------------------------- MNIST


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(raw: bytes, name="IDX file", ndim=None) -> np.ndarray:
    """Parse an (uncompressed) IDX file: magic = 0x00 0x00 dtype-code ndim,
    then ndim big-endian uint32 dims, then the data."""
    if len(raw) < 4:
        raise DataFormatError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    zero, code, dims = raw[:2], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero != b"\0\0" or code not in _IDX_DTYPES:
        raise DataFormatError(f"{name}: bad IDX magic number 0x{magic:08x} (expected 0x0000TTDD: "
                              f"type code TT in {sorted(hex(c) for c in _IDX_DTYPES)}, DD dimensions)")
    if ndim is not None and dims != ndim:
        raise DataFormatError(f"{name}: IDX magic number 0x{magic:08x} declares {dims} dimensions, "
                              f"expected {ndim} (0x{(code << 8) | ndim:08x})")
    head = 4 + 4 * dims
    if len(raw) < head:
        raise DataFormatError(f"{name}: truncated IDX header ({len(raw)} bytes, need {head} for {dims} dims)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_IDX_DTYPES[code])
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - head != size:
        raise DataFormatError(f"{name}: header says shape {shape} of {dtype.str} ({size} bytes) but "
                              f"{len(raw) - head} data bytes follow")
    return np.frombuffer(raw, dtype=dtype, count=size // dtype.itemsize, offset=head).reshape(shape)


def _find(root: Path, dataset: str, names) -> tuple[Path | None, list[Path]]:
    """The first search folder that has all ``names`` (else None) and the folders searched."""
    dirs = _search_dirs(root, dataset)
    for d in dirs:
        if all((d / n).is_file() for n in names):
            return d, dirs
    return None, dirs


def _missing(dataset, names, dirs, root):
    have = [n for n in names if any((d / n).is_file() for d in dirs)]
    lacking = [n for n in names if n not in have]
    looked = ", ".join(str(d) for d in dirs)
    return DataNotFoundError(f"{dataset}: {', '.join(lacking)} not found (looked in {looked}); "
                             f"{how_to_get(dataset, root)}")


def load_mnist(data_dir=None, *, verify=True, checksums=None) -> Splits:
    """MNIST from the four IDX .gz files: X (60000, 28, 28) / (10000, 28, 28)
    float32 in [0, 1], no validation split (carve one with :meth:`Splits.subset`).
    ``checksums`` overrides entries of :data:`MNIST_MD5` (for tests)."""
    root = resolve_data_dir(data_dir)
    md5 = {**MNIST_MD5, **(checksums or {})}
    folder, dirs = _find(root, "mnist", MNIST_MD5)
    if folder is None:
        raise _missing("mnist", list(MNIST_MD5), dirs, root)
    arrays = {}
    for name in MNIST_MD5:
        path = folder / name
        if verify:
            verify_md5(path, md5[name], dataset="mnist", root=data_dir)
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as err:
            raise DataFormatError(f"mnist: {path}: not a valid gzip file ({err})") from err
        arrays[name] = read_idx(raw, name=str(path), ndim=3 if "images" in name else 1)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[f"{prefix}-images-idx3-ubyte.gz"], arrays[f"{prefix}-labels-idx1-ubyte.gz"]
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise DataFormatError(f"mnist: {prefix} files must hold unsigned bytes, got {images.dtype}, {labels.dtype}")
        if len(images) != len(labels):
            raise DataFormatError(f"mnist: {prefix}: {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DataFormatError(f"mnist: {prefix}-labels: label {labels.max()} outside 0..9")
        splits[split] = Dataset(f"mnist/{split}", _to_unit(images), labels.astype(np.int64),
                                tuple(str(c) for c in range(10)), np.arange(len(labels)))
    return Splits("mnist", splits["train"], None, splits["test"], {"source": "mnist", "path": str(folder)})


def _to_unit(pixels: np.ndarray) -> np.ndarray:
    X = pixels.astype(np.float32)
    X /= np.float32(255)
    return X


# ---------------------------------------------------------------- CIFAR-10


_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def parse_cifar_binary(raw: bytes, name="CIFAR-10 binary batch"):
    """Records of 1 label byte + 3072 pixel bytes (R, G, B planes, row-major)
    -> (uint8 (n, 3, 32, 32), int64 (n,))."""
    if len(raw) % _CIFAR_RECORD:
        raise DataFormatError(f"{name}: {len(raw)} bytes is not a whole number of {_CIFAR_RECORD}-byte records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.size and labels.max() > 9:
        raise DataFormatError(f"{name}: label {labels.max()} outside 0..9 (not a CIFAR-10 binary batch?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's pickles contain: NumPy arrays, dtypes, and bytes."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 pickle")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def parse_cifar_pickle(raw: bytes, name="CIFAR-10 python batch"):
    """A python-version batch (a pickled dict with 'data' (n, 3072) uint8 and
    'labels') -> (uint8 (n, 3, 32, 32), int64 (n,))."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:
        raise DataFormatError(f"{name}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from err
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()} if isinstance(batch, dict) else {}
    if "data" not in batch or "labels" not in batch:
        raise DataFormatError(f"{name}: expected a dict with 'data' and 'labels', got keys {sorted(batch)}")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataFormatError(f"{name}: 'data' must be uint8 (n, 3072) with n = {len(labels)} labels, "
                              f"got {data.dtype} {data.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"{name}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_sources(version):
    """(kind, relative folder or tarball, parser) in search order."""
    binary = [("dir", "", ".bin"), ("dir", "cifar-10-batches-bin", ".bin")]
    python = [("dir", "cifar-10-batches-py", ""), ("dir", "", "")]
    tars = {"binary": ("tar", "cifar-10-binary.tar.gz", ".bin"), "python": ("tar", "cifar-10-python.tar.gz", "")}
    if version == "binary":
        return binary + [tars["binary"]]
    if version == "python":
        return python + [tars["python"]]
    if version is None:
        return binary + python + [tars["binary"], tars["python"]]
    raise ValueError(f"load_cifar10: version must be 'binary', 'python' or None, got {version!r}")


def load_cifar10(data_dir=None, *, version=None, verify=True, checksums=None) -> Splits:
    """CIFAR-10: X (50000, 3, 32, 32) / (10000, 3, 32, 32) float32 in [0, 1]
    (channels R, G, B), no validation split. ``checksums`` overrides entries
    of the MD5 tables (keyed by file name; for tests)."""
    root = resolve_data_dir(data_dir)
    md5 = {**CIFAR10_TAR_MD5, **CIFAR10_BIN_MD5, **CIFAR10_PY_MD5, **(checksums or {})}
    dirs = _search_dirs(root, "cifar10")
    for kind, where, suffix in _cifar_sources(version):
        names = [b + suffix for b in _CIFAR_BATCHES]
        for d in dirs:
            if kind == "dir" and (d / where / names[0]).is_file():
                return _load_cifar_dir(d / where, names, suffix, md5, verify, data_dir)
            if kind == "tar" and (d / where).is_file():
                return _load_cifar_tar(d / where, names, suffix, md5, verify, data_dir)
    wanted = {"binary": "data_batch_1.bin .. test_batch.bin, or cifar-10-binary.tar.gz",
              "python": "cifar-10-batches-py/data_batch_1 .., or cifar-10-python.tar.gz"}
    what = wanted.get(version) or f"{wanted['binary']}; or {wanted['python']}"
    looked = ", ".join(str(d) for d in dirs)
    raise DataNotFoundError(f"cifar10: {what} not found (looked in {looked}); {how_to_get('cifar10', data_dir)}")


def _load_cifar_dir(folder, names, suffix, md5, verify, data_dir):
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise _missing("cifar10", missing, [folder], data_dir)
    raw = {}
    for n in names:
        if verify:
            verify_md5(folder / n, md5[n], dataset="cifar10", root=data_dir)
        raw[n] = (folder / n).read_bytes()
    return _cifar_splits(raw, names, suffix, str(folder))


def _load_cifar_tar(path, names, suffix, md5, verify, data_dir):
    if verify:
        verify_md5(path, md5[path.name], dataset="cifar10", root=data_dir)
    folder = "cifar-10-batches-bin" if suffix == ".bin" else "cifar-10-batches-py"
    wanted = {f"{folder}/{n}": n for n in names}
    raw = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one sequential pass: gzip has no random access
                key = member.name.lstrip("./")
                if key in wanted and member.isfile():
                    raw[wanted[key]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataFormatError(f"cifar10: {path}: cannot read the tarball ({err})") from err
    missing = [m for m, n in wanted.items() if n not in raw]
    if missing:
        raise DataFormatError(f"cifar10: {path}: tarball has no member {', '.join(missing)}")
    return _cifar_splits(raw, names, suffix, str(path))


def _cifar_splits(raw, names, suffix, where):
    parse = parse_cifar_binary if suffix == ".bin" else parse_cifar_pickle
    parts = [parse(raw[n], name=f"{where}: {n}") for n in names]
    counts = {n: len(p[1]) for n, p in zip(names, parts)}
    # the release's files hold 10,000 records each; once one does, a file with fewer was cut (small
    # stand-ins made for tests and benchmarks, all far below 10,000, are accepted with any counts)
    off = {n: k for n, k in counts.items() if k != CIFAR10_BATCH_RECORDS}
    if off and (len(off) < len(counts) or 0 in off.values()):
        listed = ", ".join(f"{n} has {k:,}" for n, k in off.items())
        raise DataFormatError(f"cifar10: {where}: every batch file must hold {CIFAR10_BATCH_RECORDS:,} records; "
                              f"{listed} (the file is cut or not a CIFAR-10 batch)")
    train_X = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    test_X, test_y = parts[5]
    train = Dataset("cifar10/train", _to_unit(train_X), train_y, CIFAR10_CLASSES, np.arange(len(train_y)))
    test = Dataset("cifar10/test", _to_unit(test_X), test_y, CIFAR10_CLASSES, np.arange(len(test_y)))
    version = "binary" if suffix == ".bin" else "python"
    return Splits("cifar10", train, None, test, {"source": "cifar10", "version": version, "path": where})


# ---------------------------------------------------------------- digits (embedded) and named sets


def load_digits(seed=0, verify=True) -> Splits:
    """scikit-learn's 1,797 8x8 digits, X (N, 8, 8) in [0, 1], split
    1,257 / 270 / 270 (see the module docstring; ``seed=0`` is THE split).
    ``verify`` is accepted and ignored (embedded: no file to check), so that
    ``--no-verify`` works for every data set."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    X = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    full = Dataset("digits", X, y, tuple(str(c) for c in range(10)), np.arange(len(y)))
    test_idx = stratified_pick(y, DIGITS_SPLIT["test"], np.random.default_rng([seed, 2]), what="digits")
    rest = np.setdiff1d(np.arange(len(y)), test_idx)
    val_idx = stratified_pick(y, DIGITS_SPLIT["val"], np.random.default_rng([seed, 1]), pool=rest, what="digits")
    train_idx = np.setdiff1d(rest, val_idx)
    return Splits("digits", full.take(train_idx, "digits/train"), full.take(val_idx, "digits/val"),
                  full.take(test_idx, "digits/test"), {"source": "sklearn.datasets.load_digits", "split_seed": seed})


def mnist_2pct(data_dir=None, seed=0, **kw) -> Splits:
    """The 2% MNIST split: 1,200 train + 200 val drawn disjointly from MNIST's
    training set, 200 test from its test set, class-balanced (120 / 20 / 20
    per class), seeded."""
    return load_mnist(data_dir, **kw).subset(1200, 200, 200, seed=seed, stratify="balanced", name="mnist-2pct")


LOADERS = {"digits": load_digits, "mnist": load_mnist, "mnist-2pct": mnist_2pct, "cifar10": load_cifar10}


def load(name: str, data_dir=None, **kw) -> Splits:
    """Load a data set by name: one of :data:`LOADERS`."""
    if name not in LOADERS:
        raise ValueError(f"data.load: unknown data set {name!r}; choose one of {sorted(LOADERS)}")
    if name == "digits":
        return load_digits(**kw)
    return LOADERS[name](data_dir, **kw)
