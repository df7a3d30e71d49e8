"""Download data files safely: stream, verify, rename.

    python -m experiments.download mnist   [--data-dir DIR]
    python -m experiments.download cifar10 [--data-dir DIR] [--version binary|python]

:func:`download` streams ``url`` into ``DEST.part`` (a temp file in the
destination's folder), checks its MD5 and only then ``os.replace``s it onto
``DEST``, so ``DEST`` is either absent or complete and verified -- never
partial. Around that:

* resume: a ``DEST.part`` left by an interrupted call is continued with an
  HTTP ``Range: bytes=N-`` request; a server that answers 200 instead of 206
  (no range support) is read from the start again, truncating the part;
* retries: timeouts, connection resets, 5xx (and 429) answers and bodies
  shorter than their Content-Length are retried ``retries`` times with
  exponential backoff (``backoff * 2**k`` seconds), each retry resuming what
  already arrived; other HTTP errors (404, 403, ...) and errors that waiting
  does not cure -- a host name that does not resolve (``socket.gaierror``), a
  refused connection (``ConnectionRefusedError``), also when wrapped in
  ``urllib.error.URLError`` -- fail at once, with no retry. Every
  DownloadError says what became of ``DEST.part``: a failed request never
  deletes it, so it is either absent or kept with the bytes received (and
  resumed by the next call when ``resume``);
* checksum: a payload whose MD5 is wrong is deleted (no ``.part``, no
  ``DEST``) and :class:`~experiments.data.ChecksumError` is raised -- after
  one clean restart when the bad payload had been resumed (the old part may
  have been the corrupt piece);
* progress: a tqdm bar on stderr when tqdm is installed and ``progress``.

One process per destination: two concurrent downloads of the same file would
share its ``.part``. Data sets land in ``DATA_DIR/mnist/`` and
``DATA_DIR/cifar10/``, where :mod:`experiments.data` looks; CIFAR-10 stays a
tarball (the loader reads it in place). ``DATA_DIR`` resolves as in
:func:`experiments.data.resolve_data_dir`.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from experiments.data import CIFAR10_TAR_MD5, MNIST_MD5, ChecksumError, md5sum, resolve_data_dir

# The official location first, then the mirrors that serve the identical files (the MD5 check makes any safe).
MNIST_URLS = (
    "http://yann.lecun.com/exdb/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
CIFAR10_URLS = {
    "binary": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "python": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
}


class DownloadError(Exception):
    """A download failed for a reason other than a checksum mismatch."""


class _Retry(Exception):
    """A transient failure: try again (resuming)."""


_TRANSIENT = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)
_PERMANENT = (socket.gaierror, ConnectionRefusedError)  # no retry: waiting does not make a name resolve


def _permanent(err) -> bool:
    """Whether a network error will not go away by retrying: a name that does
    not resolve or a refused connection, raised as is or inside a URLError."""
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    return isinstance(reason, _PERMANENT)


def _part_note(part: Path, resume: bool) -> str:
    """What a failed download left in ``part``, truthfully."""
    if not part.exists():
        return f"no partial file was left ({part.name} does not exist)"
    then = "the next call resumes it" if resume else "the next call (resume=False) starts over and overwrites it"
    return f"{part} keeps the {_size(part)} bytes received so far; {then}"


def _check_args(url, md5, retries, backoff, timeout, chunk_size):
    if not isinstance(url, str) or not re.match(r"https?://", url):
        raise ValueError(f"download: url must be an http(s):// address, got {url!r}")
    if not (isinstance(md5, str) and re.fullmatch(r"[0-9a-f]{32}", md5)):
        raise ValueError(f"download {url}: md5 must be 32 lowercase hex digits, got {md5!r}")
    for name, value, low in (("retries", retries, 0), ("chunk_size", chunk_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"download {url}: {name} must be an int >= {low}, got {value!r}")
    for name, value, zero_ok in (("backoff", backoff, True), ("timeout", timeout, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 <= value < float("inf") if zero_ok else 0 < value < float("inf")):
            raise ValueError(f"download {url}: {name} must be a finite number {'>=' if zero_ok else '>'} 0, "
                             f"got {value!r}")


def download(url, dest, md5, *, retries=4, backoff=1.0, timeout=60.0, chunk_size=1 << 16,
             progress=True, resume=True, sleep=time.sleep) -> Path:
    """Fetch ``url`` to ``dest`` and verify its MD5 (see the module docstring).
    Returns ``dest``; a ``dest`` that already has the right MD5 is kept as it
    is (no request); one with a wrong MD5 is replaced by a verified copy."""
    _check_args(url, md5, retries, backoff, timeout, chunk_size)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if md5sum(dest) == md5:
            return dest
        print(f"download: {dest} exists but its MD5 is not {md5}; fetching it again", file=sys.stderr)
    part = dest.with_name(dest.name + ".part")
    failures, restarted = 0, False
    while True:
        try:
            resumed = _fetch(url, part, resume=resume and not restarted, timeout=timeout,
                             chunk_size=chunk_size, progress=progress, label=dest.name)
        except _Retry as err:
            failures += 1
            if failures > retries:
                raise DownloadError(
                    f"download {url}: failed {failures} times, last: {err.__cause__ or err}; "
                    f"{_part_note(part, resume)}"
                ) from err
            sleep(backoff * 2 ** (failures - 1))
            continue
        actual = md5sum(part)
        if actual == md5:
            os.replace(part, dest)
            return dest
        part.unlink()
        if resumed and not restarted:
            restarted = True  # the old part may have been the corrupt piece: one clean restart
            continue
        raise ChecksumError(
            f"download {url}: the payload's MD5 is {actual}, expected {md5}; it was deleted (no {dest.name} "
            f"and no partial file left). The server sent a corrupt or different file: try again later or another mirror"
        )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _fetch(url, part: Path, *, resume, timeout, chunk_size, progress, label) -> bool:
    """One request into ``part``; returns whether it continued an existing
    part. Raises :class:`_Retry` for transient failures."""
    offset = _size(part) if resume else 0
    headers = {"User-Agent": "tinygrad2-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing after offset: the part is complete (or too long; the MD5 tells)
            return True
        if err.code >= 500 or err.code == 429:
            raise _Retry(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(f"download {url}: HTTP {err.code} {err.reason}; {_part_note(part, resume)}") from err
    except _TRANSIENT + _PERMANENT as err:
        if _permanent(err):
            what = ("the host name does not resolve" if isinstance(getattr(err, "reason", err), socket.gaierror)
                    else "the connection was refused")
            raise DownloadError(f"download {url}: {what} ({err}); not retried (waiting does not cure it); "
                                f"{_part_note(part, resume)}") from err
        raise _Retry(str(err)) from err
    with response:
        ranged = offset and response.status == 206 and _range_start(response) == offset
        if not ranged:
            offset = 0  # no range support (200) or an unexpected range: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        try:
            with open(part, "ab" if ranged else "wb") as f, _bar(progress, total, offset, label) as bar:
                while block := response.read(chunk_size):
                    f.write(block)
                    bar(len(block))
                f.flush()
                os.fsync(f.fileno())
        except _TRANSIENT as err:
            raise _Retry(str(err)) from err
    if total is not None and _size(part) != total:
        raise _Retry(f"connection closed after {_size(part)} of {total} bytes")
    return bool(ranged)


def _range_start(response):
    """The first byte of a 206 answer's Content-Range ('bytes 100-199/200' -> 100)."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


@contextlib.contextmanager
def _bar(enabled, total, initial, label):
    """Yields ``update(n)``: a tqdm bar when tqdm is there and ``enabled``, else nothing."""
    tqdm = None
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
    if tqdm is None:
        yield lambda n: None
        return
    with tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
              file=sys.stderr, leave=False) as bar:
        yield bar.update


def _first_that_works(urls, dest, md5, **kw) -> Path:
    errors = []
    for url in urls:
        try:
            return download(url, dest, md5, **kw)
        except (DownloadError, ChecksumError) as err:
            errors.append(f"{url}: {err}")
            print(f"download: {url} failed, trying the next location", file=sys.stderr)
    raise DownloadError(f"download {dest.name}: every location failed:\n  " + "\n  ".join(errors))


def download_mnist(data_dir=None, **kw) -> Path:
    """The four MNIST IDX .gz files into ``DATA_DIR/mnist/``; returns that folder."""
    folder = resolve_data_dir(data_dir) / "mnist"
    for name, md5 in MNIST_MD5.items():
        _first_that_works([base + name for base in MNIST_URLS], folder / name, md5, **kw)
    return folder


def download_cifar10(data_dir=None, version="binary", **kw) -> Path:
    """The CIFAR-10 tarball (``version`` "binary" or "python") into
    ``DATA_DIR/cifar10/``; returns its path (the loader reads it unextracted)."""
    if version not in CIFAR10_URLS:
        raise ValueError(f"download_cifar10: version must be one of {sorted(CIFAR10_URLS)}, got {version!r}")
    url = CIFAR10_URLS[version]
    name = url.rsplit("/", 1)[1]
    return download(url, resolve_data_dir(data_dir) / "cifar10" / name, CIFAR10_TAR_MD5[name], **kw)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.download", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["mnist", "cifar10"])
    parser.add_argument("--data-dir", default=None, help="default: $TINYGRAD2_DATA, else ~/.cache/tinygrad2")
    parser.add_argument("--version", choices=sorted(CIFAR10_URLS), default="binary", help="CIFAR-10 only")
    args = parser.parse_args(argv)
    if args.dataset == "mnist":
        where = download_mnist(args.data_dir)
    else:
        where = download_cifar10(args.data_dir, version=args.version)
    print(f"{args.dataset}: ready at {where}")


if __name__ == "__main__":
    main()
