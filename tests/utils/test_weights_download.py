"""Weight sources: local files, URLs served by a local HTTP server (download, cache, hash check),
the detectron2:// prefix and the error without network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import os
import pickle
import socket
import threading
import time

import pytest
import torch

from mask2former.utils import weights_download as wd
from mask2former.utils.weights_download import (
    WeightsDownloadError,
    WeightsHashError,
    expand_url,
    expected_hash,
    resolve_weights,
    url_to_cache_path,
)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):  # silence the server's stderr log
        pass


@pytest.fixture
def server(tmp_path):
    """(root folder served, base URL, list of requested paths)."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []
    handler = functools.partial(type("H", (_CountingHandler,), {"requests": requests}), directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def _payload() -> bytes:
    return pickle.dumps({"model": {"w": torch.arange(6.0).numpy()}, "__author__": "test"})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_pkl_and_pth(tmp_path):
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(_payload())
    pth = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.ones(2)}}, pth)
    assert resolve_weights(str(pkl)) == str(pkl)
    assert resolve_weights(str(pth)) == str(pth)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        resolve_weights(str(tmp_path / "missing.pkl"))
    with pytest.raises(FileNotFoundError, match="convert_swin.py"):
        resolve_weights(str(tmp_path / "swin_tiny_patch4_window7_224.pkl"))
    with pytest.raises(ValueError, match="empty"):
        resolve_weights("")


def test_hash_from_file_name():
    assert expected_hash("model_final_94dc52.pkl") == ("md5", "94dc52")
    assert expected_hash("/x/resnet50-0676ba61.pth") == ("sha256", "0676ba61")
    assert expected_hash("R-50.pkl") is None
    assert expected_hash("swin_large_patch4_window12_384_22k.pkl") is None


def test_md5_download_then_cache_hit(server, tmp_path):
    root, base, requests = server
    data = _payload()
    name = f"model_final_{hashlib.md5(data).hexdigest()[:6]}.pkl"
    (root / "coco").mkdir()
    (root / "coco" / name).write_bytes(data)
    cache = tmp_path / "cache"
    url = f"{base}/coco/{name}"
    path = resolve_weights(url, cache_dir=str(cache))
    assert path == url_to_cache_path(url, str(cache))
    assert path.startswith(str(cache)) and path.endswith(os.path.join("coco", name))
    with open(path, "rb") as f:
        assert f.read() == data
    assert requests == [f"/coco/{name}"]
    assert resolve_weights(url, cache_dir=str(cache)) == path  # second call: from the cache
    assert len(requests) == 1
    assert [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".part")] == []


def test_sha256_download_and_env_cache(server, tmp_path, monkeypatch):
    root, base, _ = server
    data = os.urandom(3000)
    name = f"resnet50-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / name).write_bytes(data)
    monkeypatch.setenv("MASK2FORMER_CACHE", str(tmp_path / "envcache"))
    path = resolve_weights(f"{base}/{name}")
    assert path.startswith(str(tmp_path / "envcache"))
    with open(path, "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize("name", ["model_final_000000.pkl", "resnet50-00000000.pth"])
def test_hash_mismatch_is_refused_and_deleted(server, tmp_path, name):
    root, base, _ = server
    (root / name).write_bytes(b"not the published file")
    cache = tmp_path / "cache"
    url = f"{base}/{name}"
    with pytest.raises(WeightsHashError) as e:
        resolve_weights(url, cache_dir=str(cache))
    msg = str(e.value)
    assert name in msg and url in msg and name.split("_")[-1].split("-")[-1].split(".")[0] in msg
    algo = "md5" if name.startswith("model_final") else "sha256"
    assert getattr(hashlib, algo)(b"not the published file").hexdigest() in msg
    target = url_to_cache_path(url, str(cache))
    assert not os.path.exists(target)
    assert os.listdir(os.path.dirname(target)) == []  # the temporary file is gone too


def test_detectron2_prefix(server, tmp_path, monkeypatch):
    assert (
        expand_url("detectron2://ImageNetPretrained/torchvision/R-50.pkl")
        == "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
    )
    assert expand_url("/data/R-50.pkl") == "/data/R-50.pkl"
    cache = tmp_path / "cache"
    # A cached file is used without any network access.
    url = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
    cached = url_to_cache_path(url, str(cache))
    os.makedirs(os.path.dirname(cached))
    with open(cached, "wb") as f:
        f.write(_payload())
    assert resolve_weights("detectron2://ImageNetPretrained/torchvision/R-50.pkl", str(cache)) == cached
    # And an uncached one is fetched from the mapped URL.
    root, base, requests = server
    (root / "detectron2" / "ImageNetPretrained" / "MSRA").mkdir(parents=True)
    (root / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-101.pkl").write_bytes(b"weights")
    monkeypatch.setattr(wd, "DETECTRON2_PREFIX", f"{base}/detectron2/")
    path = resolve_weights("detectron2://ImageNetPretrained/MSRA/R-101.pkl", str(cache))
    assert requests == ["/detectron2/ImageNetPretrained/MSRA/R-101.pkl"]
    with open(path, "rb") as f:
        assert f.read() == b"weights"


def test_no_network_error_names_url_and_cache_path(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/maskformer/model_final_94dc52.pkl"
    cache = tmp_path / "cache"
    with pytest.raises(WeightsDownloadError) as e:
        resolve_weights(url, cache_dir=str(cache))
    target = url_to_cache_path(url, str(cache))
    assert url in str(e.value) and target in str(e.value)
    assert not os.path.exists(target)
    assert os.listdir(os.path.dirname(target)) == []


def test_http_404_is_a_download_error(server, tmp_path):
    _, base, _ = server
    with pytest.raises(WeightsDownloadError, match="missing_abcdef.pkl"):
        resolve_weights(f"{base}/missing_abcdef.pkl", cache_dir=str(tmp_path / "cache"))


# ---- the cache never holds a bad file (issue 14, group 8) -------------------------------------
class _HostileHandler(http.server.BaseHTTPRequestHandler):
    """/truncated: Content-Length 1000, 400 bytes sent; /error.pkl: an HTML error page with status
    200; /sniffed.pkl: the same page as application/octet-stream; /trickle.pkl: 1 byte every
    `trickle_s` seconds."""

    trickle_s = 0.3

    def do_GET(self):  # noqa: N802 - http.server's name
        page = b"<!DOCTYPE html><html><body>503 Service Unavailable</body></html>"
        if self.path.startswith("/truncated"):
            self._head("application/octet-stream", 1000)
            self.wfile.write(b"x" * 400)
        elif self.path == "/error.pkl":
            self._head("text/html; charset=utf-8", len(page))
            self.wfile.write(page)
        elif self.path == "/sniffed.pkl":
            self._head("application/octet-stream", len(page))
            self.wfile.write(page)
        elif self.path == "/trickle.pkl":
            self._head("application/octet-stream", 1000)
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(self.trickle_s)

    def _head(self, content_type: str, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, format, *args):
        pass


def _serve(handler):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def hostile():
    httpd, base = _serve(_HostileHandler)
    yield base
    httpd.shutdown()
    httpd.server_close()


def _nothing_cached(url, cache) -> bool:
    target = url_to_cache_path(url, str(cache))
    return not os.path.exists(target) and os.listdir(os.path.dirname(target)) == []


@pytest.mark.parametrize("path", ["/truncated.pkl", "/truncated_94dc52.pkl"])
def test_truncated_response_is_not_cached(hostile, tmp_path, path):
    url = hostile + path
    with pytest.raises(WeightsDownloadError, match="truncated: .*400 of the 1000 bytes"):
        resolve_weights(url, cache_dir=str(tmp_path))
    assert _nothing_cached(url, tmp_path)


@pytest.mark.parametrize("path", ["/error.pkl", "/sniffed.pkl"])
def test_html_error_page_is_not_cached(hostile, tmp_path, path):
    url = hostile + path
    with pytest.raises(WeightsDownloadError, match="HTML page"):
        resolve_weights(url, cache_dir=str(tmp_path))
    assert _nothing_cached(url, tmp_path)


@pytest.mark.parametrize("trickle_s", [0.3, 10.0])
def test_trickling_server_fails_within_the_deadline(tmp_path, monkeypatch, trickle_s):
    """1 byte every 0.3 s (each read is quick) and every 10 s (one read outlasts the deadline)."""
    httpd, base = _serve(type("Trickle", (_HostileHandler,), {"trickle_s": trickle_s}))
    monkeypatch.setenv(wd.DEADLINE_ENV, "1.5")
    url = base + "/trickle.pkl"
    start = time.monotonic()
    try:
        with pytest.raises(WeightsDownloadError, match="deadline|timed out"):
            resolve_weights(url, cache_dir=str(tmp_path))
    finally:
        httpd.shutdown()
    assert time.monotonic() - start < 10  # the whole body would take 300 s or more
    assert _nothing_cached(url, tmp_path)


def test_bad_cached_file_is_deleted_with_a_message_and_downloaded_again(server, tmp_path, caplog):
    root, base, requests = server
    data = _payload()
    name = f"model_final_{hashlib.md5(data).hexdigest()[:6]}.pkl"
    (root / name).write_bytes(data)
    url = f"{base}/{name}"
    path = resolve_weights(url, cache_dir=str(tmp_path / "cache"))
    assert os.path.isfile(path + ".sha256")
    with open(path, "r+b") as f:  # truncated on disk after the download
        f.truncate(len(data) // 2)
    caplog.set_level(logging.WARNING, logger="mask2former")
    assert resolve_weights(url, cache_dir=str(tmp_path / "cache")) == path
    assert f"Deleted the cached {path}" in caplog.text and "md5" in caplog.text
    assert len(requests) == 2
    with open(path, "rb") as f:
        assert f.read() == data


def test_cached_file_without_hash_in_its_name_is_checked_against_its_recorded_sha256(
    server, tmp_path, caplog
):
    root, base, requests = server
    (root / "R-50.pkl").write_bytes(_payload())
    url = f"{base}/R-50.pkl"
    path = resolve_weights(url, cache_dir=str(tmp_path / "cache"))
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[10] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))
    caplog.set_level(logging.WARNING, logger="mask2former")
    resolve_weights(url, cache_dir=str(tmp_path / "cache"))
    assert "Deleted the cached" in caplog.text and "SHA-256" in caplog.text
    assert len(requests) == 2


def test_file_put_by_hand_at_the_cache_path_is_hash_checked(tmp_path, caplog):
    """The path printed by the offline error: a wrong file there is deleted, saying so."""
    url = f"http://127.0.0.1:{_closed_port()}/maskformer/model_final_94dc52.pkl"
    target = url_to_cache_path(url, str(tmp_path))
    os.makedirs(os.path.dirname(target))
    with open(target, "wb") as f:
        f.write(_payload())  # not the file whose md5 starts with 94dc52
    caplog.set_level(logging.WARNING, logger="mask2former")
    with pytest.raises(WeightsDownloadError, match="could not download"):
        resolve_weights(url, cache_dir=str(tmp_path))
    assert f"Deleted the cached {target}" in caplog.text
    assert not os.path.exists(target)


def test_unreadable_cached_download_is_deleted_saying_so(server, tmp_path, monkeypatch):
    """A cached file without hash that does not load: the error says it was deleted."""
    from mask2former.checkpoint import CheckpointError, load_state_dict_file

    root, base, _ = server
    (root / "R-101.pkl").write_bytes(_payload()[:40])  # truncated at the source
    monkeypatch.setenv("MASK2FORMER_CACHE", str(tmp_path / "cache"))
    url = f"{base}/R-101.pkl"
    with pytest.raises(CheckpointError, match="cached download .* was deleted"):
        load_state_dict_file(url)
    assert not os.path.exists(url_to_cache_path(url))
