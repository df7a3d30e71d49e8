"""experiments.download against a local HTTP server on 127.0.0.1 (an
ephemeral port, generated payloads; nothing here reaches the internet)."""
from __future__ import annotations

import gzip
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from experiments import data as D
from experiments import download as DL

pytestmark = pytest.mark.cpu_only  # host-bound: downloads and file checks

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """Serves ``files`` (path -> bytes); ``ranges`` turns Range support on;
    ``cut`` = (n_bytes, times): the next ``times`` answers stop after n_bytes
    although they announced the full length."""

    def __init__(self):
        self.files, self.ranges, self.cut, self.log = {}, True, None, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                server.log.append((self.path, self.headers.get("Range")))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if server.ranges and self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server.cut and server.cut[1] > 0:
                    server.cut = (server.cut[0], server.cut[1] - 1)
                    part = part[: server.cut[0]]
                self.wfile.write(part)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    s.files["/file.bin"] = PAYLOAD
    yield s
    s.close()


def fetch(server, dest, md5=PAYLOAD_MD5, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 10.0)
    return DL.download(server.url + "/file.bin", dest, md5, **kw)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_success_and_no_temp_file(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    assert fetch(server, dest, progress=True) == dest
    assert dest.read_bytes() == PAYLOAD and leftovers(dest.parent) == ["file.bin"]
    fetch(server, dest)  # already there and verified: no request
    assert len(server.log) == 1


def test_corrupt_payload_is_rejected_and_nothing_is_left(server, tmp_path):
    server.files["/file.bin"] = PAYLOAD[:-1] + b"\x00"
    dest = tmp_path / "file.bin"
    with pytest.raises(D.ChecksumError) as err:
        fetch(server, dest)
    assert PAYLOAD_MD5 in str(err.value) and "/file.bin" in str(err.value)
    assert leftovers(tmp_path) == []


def test_range_request_resumes_a_partial_file(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:123_456])
    fetch(server, dest)
    assert server.log == [("/file.bin", "bytes=123456-")]
    assert dest.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["file.bin"]


def test_server_without_range_support_restarts(server, tmp_path):
    server.ranges = False
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * 1000)  # not even the right bytes: must be truncated
    fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["file.bin"]


def test_dropped_connection_is_retried_and_resumed(server, tmp_path):
    server.cut = (100_000, 1)
    sleeps = []
    fetch(server, tmp_path / "file.bin", backoff=0.5, sleep=sleeps.append)
    assert server.log == [("/file.bin", None), ("/file.bin", "bytes=100000-")]
    assert sleeps == [0.5] and (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_corrupt_resumed_part_gets_one_clean_restart(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(b"\xff" * 5000)
    fetch(server, tmp_path / "file.bin")
    assert server.log == [("/file.bin", "bytes=5000-"), ("/file.bin", None)]
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_complete_part_answered_416_is_verified(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    fetch(server, tmp_path / "file.bin")
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD and leftovers(tmp_path) == ["file.bin"]


def test_retries_give_up_keeping_the_part_for_later(server, tmp_path):
    server.cut = (1000, 99)
    sleeps = []
    with pytest.raises(DL.DownloadError, match="failed 3 times.*file.bin.part keeps the 3000 bytes"):
        fetch(server, tmp_path / "file.bin", retries=2, backoff=1.0, sleep=sleeps.append)
    assert sleeps == [1.0, 2.0] and leftovers(tmp_path) == ["file.bin.part"]
    server.cut = None
    fetch(server, tmp_path / "file.bin")  # the next call resumes
    assert server.log[-1] == ("/file.bin", "bytes=3000-") and (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_http_404_fails_at_once(server, tmp_path):
    with pytest.raises(DL.DownloadError, match="HTTP 404"):
        DL.download(server.url + "/missing.bin", tmp_path / "m.bin", PAYLOAD_MD5, progress=False, backoff=0)
    assert len(server.log) == 1 and leftovers(tmp_path) == []


def test_wrong_existing_file_is_replaced_by_a_verified_copy(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"old and wrong")
    fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD


def test_download_mnist_tries_the_next_location_then_loads(server, tmp_path, monkeypatch):
    """The whole path: mirrors, the mnist/ subfolder, then the loader."""
    def idx(a):
        return bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()

    files = {"train-images-idx3-ubyte.gz": np.zeros((4, 28, 28), np.uint8),
             "train-labels-idx1-ubyte.gz": np.arange(4, dtype=np.uint8),
             "t10k-images-idx3-ubyte.gz": np.ones((2, 28, 28), np.uint8),
             "t10k-labels-idx1-ubyte.gz": np.arange(2, dtype=np.uint8)}
    sums = {}
    for name, a in files.items():
        server.files[f"/mirror/{name}"] = raw = gzip.compress(idx(a), mtime=0)
        sums[name] = hashlib.md5(raw).hexdigest()
    monkeypatch.setattr(DL, "MNIST_URLS", (server.url + "/gone/", server.url + "/mirror/"))
    monkeypatch.setattr(DL, "MNIST_MD5", sums)
    folder = DL.download_mnist(tmp_path, progress=False, backoff=0)
    assert folder == tmp_path / "mnist" and sorted(leftovers(folder)) == sorted(files)
    data = D.load_mnist(tmp_path, checksums=sums)
    assert data.train.y.tolist() == [0, 1, 2, 3] and data.test.X.shape == (2, 28, 28)
    with pytest.raises(ValueError, match="version must be one of"):
        DL.download_cifar10(tmp_path, version="matlab")
