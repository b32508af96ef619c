"""Weight sources for MODEL.WEIGHTS: a local file, an http(s) URL, or the original's `detectron2://` prefix.

`resolve_weights(path_or_url)` returns a local path:
- a local path is returned as is (made absolute) if the file exists;
- `detectron2://X` means `https://dl.fbaipublicfiles.com/detectron2/X`, as in Detectron2;
- a URL is downloaded once into the cache folder (`cache_dir`, else `$MASK2FORMER_CACHE`, else
  `~/.cache/mask2former`), at `<cache>/<host>/<path of the URL>`, with a progress bar. The download
  goes to a temporary file in the same folder and is renamed into place only after it passed every
  check: its size equals the server's Content-Length, it is not an HTML page (an error page served
  with status 200), and its hash matches the one in its name. Its SHA-256 is then recorded beside it
  (`<file>.sha256`), so an interrupted, truncated or corrupt download never sits at the cache path.
- The whole download has a deadline (`deadline_s`, default `$MASK2FORMER_DOWNLOAD_DEADLINE_S` or one
  hour): a server that trickles bytes fails within it instead of hanging.

A cached file is checked every time it is used: against the hash in its name, else against its
recorded SHA-256. A file that fails is deleted, with a warning saying so, and downloaded again. A
file put at the cache path by hand is checked the same way; one whose name carries no hash and that
has no recorded SHA-256 cannot be checked: it is used with a warning and its SHA-256 is recorded.

Hash check, from the file name (the conventions of the files users download):
- `model_final_94dc52.pkl` (Detectron2 / Mask2Former model zoo): 6 hex digits after the last `_`
  are the start of the file's MD5;
- `resnet50-0676ba61.pth` (torchvision, torch.hub): 8 or more hex digits after the last `-` are the
  start of the file's SHA-256.
A name without such a suffix (`R-50.pkl`) is downloaded without a check.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from mask2former.checkpoint.errors import CheckpointError
from mask2former.checkpoint.integrity import record_sha256, remove_with_sha256, verify_sha256
from mask2former.utils.env import positive_env_number

__all__ = [
    "DETECTRON2_PREFIX",
    "WeightsDownloadError",
    "WeightsHashError",
    "default_cache_dir",
    "expand_url",
    "expected_hash",
    "resolve_weights",
    "url_to_cache_path",
]

logger = logging.getLogger(__name__)

DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
DEADLINE_ENV = "MASK2FORMER_DOWNLOAD_DEADLINE_S"
DEFAULT_DEADLINE_S = 3600.0


class WeightsDownloadError(RuntimeError):
    """A URL could not be fetched; the message says which URL to download and where to put it."""


class WeightsHashError(ValueError):
    """A downloaded file's hash does not match the prefix its name carries (the download is deleted)."""


def default_cache_dir() -> str:
    """`$MASK2FORMER_CACHE` if set, else `~/.cache/mask2former`."""
    return os.path.expanduser(
        os.environ.get("MASK2FORMER_CACHE") or os.path.join("~", ".cache", "mask2former")
    )


def expand_url(path_or_url: str) -> str:
    """Map `detectron2://X` to `https://dl.fbaipublicfiles.com/detectron2/X`; other strings unchanged."""
    if path_or_url.startswith("detectron2://"):
        return DETECTRON2_PREFIX + path_or_url[len("detectron2://") :]
    return path_or_url


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https")


def url_to_cache_path(url: str, cache_dir: str | None = None) -> str:
    """Where `url` is cached: `<cache_dir>/<host>/<path>` (the URL's path keeps same-named files apart)."""
    parsed = urllib.parse.urlparse(url)
    parts = [p for p in urllib.parse.unquote(parsed.path).split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"cannot cache {url!r}: its path must name a file")
    host = parsed.netloc.replace(":", "_")
    return os.path.join(os.path.expanduser(cache_dir) if cache_dir else default_cache_dir(), host, *parts)


def expected_hash(filename: str) -> tuple[str, str] | None:
    """The hash prefix a file name carries: ("md5", 6 hex digits) for `name_94dc52.ext`,
    ("sha256", >= 8 hex digits) for `name-0676ba61.ext`, else None."""
    base = os.path.basename(filename)
    if m := re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", base):
        return "sha256", m.group(1)
    if m := re.search(r"_([0-9a-f]{6})\.[A-Za-z0-9]+$", base):
        return "md5", m.group(1)
    return None


def download_deadline_s() -> float:
    """The configured overall download deadline (`$MASK2FORMER_DOWNLOAD_DEADLINE_S`, default one hour)."""
    return positive_env_number(DEADLINE_ENV, DEFAULT_DEADLINE_S, float, "seconds")


def resolve_weights(path_or_url: str, cache_dir: str | None = None, deadline_s: float | None = None) -> str:
    """A local path for MODEL.WEIGHTS-style input: a local file, an http(s) URL or `detectron2://...`.

    URLs are downloaded once into `cache_dir` (default: `$MASK2FORMER_CACHE` or ~/.cache/mask2former)
    within `deadline_s` seconds (default `download_deadline_s()`) and checked (see the module doc).

    Raises:
        FileNotFoundError: a local path that does not exist.
        WeightsDownloadError: the URL could not be fetched (the message gives the URL and the cache path).
        WeightsHashError: the download's hash differs from its name's (the download is deleted).
    """
    if not path_or_url:
        raise ValueError("no weights given (MODEL.WEIGHTS is empty)")
    url = expand_url(path_or_url)
    if not _is_url(url):
        path = os.path.abspath(os.path.expanduser(url))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {path}{_conversion_hint(path)}")
        return path
    target = url_to_cache_path(url, cache_dir)
    if os.path.isfile(target) and _cached_file_is_good(target, url):
        logger.info("Using cached %s for %s", target, url)
        return target
    _download(url, target, download_deadline_s() if deadline_s is None else deadline_s)
    return target


def _cached_file_is_good(target: str, url: str) -> bool:
    """Check a cached file (downloaded, or put there by hand); delete it, saying so, when it fails."""
    problem = _html_problem(target) or _name_hash_problem(target, target)
    if problem is None and expected_hash(target) is None:
        try:
            if not verify_sha256(target):
                logger.warning(
                    "%s (for %s) has no hash in its name and no recorded SHA-256, so it cannot be checked "
                    "(put there by hand?); using it, and recording its SHA-256 to find later corruption",
                    target,
                    url,
                )
                record_sha256(target)
        except CheckpointError as e:
            problem = str(e)
    if problem is None:
        return True
    remove_with_sha256(target)
    logger.warning("Deleted the cached %s: %s. Downloading %s again", target, problem, url)
    return False


def _html_problem(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(512)
    return "it is an HTML page, not a weights file" if _looks_like_html(head) else None


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml"))


def _name_hash_problem(path: str, name: str) -> str | None:
    """Why the file at `path` fails the hash its `name` carries (None: it passes, or no hash)."""
    check = expected_hash(name)
    if check is None:
        return None
    digest = hashlib.new(check[0])
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual.startswith(check[1]):
        return None
    return f"its {check[0]} is {actual}, but its name expects a hash starting with {check[1]}"


def _conversion_hint(path: str) -> str:
    name = os.path.basename(path)
    if name.startswith("swin_"):
        return (
            f"; {name} is an ImageNet-pretrained Swin converted from the official .pth: "
            "run `python tools/convert_swin.py <official .pth> <this path>`"
        )
    if re.fullmatch(r"R-\d+\.pkl", name):
        return (
            f"; {name} is an ImageNet-pretrained ResNet converted from torchvision: "
            "run `python tools/convert_torchvision_resnet.py <resnetNN-*.pth> <this path>`"
        )
    return ""


def _download(url: str, target: str, deadline_s: float) -> None:
    """Stream `url` into a temporary file next to `target`, check it, then rename it into place."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(target), prefix=os.path.basename(target) + ".", suffix=".part"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            _fetch(url, target, f, deadline_s)
        problem = _html_problem(tmp)
        if problem is not None:
            raise WeightsDownloadError(f"refused the download of {url}: {problem} (not cached)")
        problem = _name_hash_problem(tmp, target)
        if problem is not None:
            raise WeightsHashError(
                f"{os.path.basename(target)} downloaded from {url}: {problem}; the download was deleted"
            )
        os.replace(tmp, target)
        record_sha256(target)
        logger.info("Downloaded %s to %s", url, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fetch(url: str, target: str, f, deadline_s: float) -> None:
    """Write the body of `url` to `f`, within `deadline_s` seconds and with the announced size."""
    end = time.monotonic() + deadline_s
    received, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=min(_TIMEOUT_S, deadline_s)) as response:
            content_type = response.headers.get("Content-Type") or ""
            if content_type.split(";")[0].strip().lower() == "text/html":
                raise WeightsDownloadError(
                    f"refused the download of {url}: the server answered with an HTML page "
                    f"(Content-Type {content_type}), not a weights file (not cached)"
                )
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=os.path.basename(target)
            ) as bar:
                while chunk := response.read1(_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() > end:
                        raise TimeoutError(
                            f"deadline of {deadline_s:g} s passed after {received} bytes "
                            f"(set ${DEADLINE_ENV} for a slow connection)"
                        )
    except http.client.IncompleteRead as e:
        raise WeightsDownloadError(
            f"the download of {url} is truncated: the server closed the connection after "
            f"{received + len(e.partial)} of the {total} bytes announced (not cached)"
        ) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
        raise WeightsDownloadError(
            f"could not download {url} ({reason}). Without network access, download that file on "
            f"another machine and put it at {target} (or set MODEL.WEIGHTS to a local path)"
        ) from e
    if total is not None and received != total:
        raise WeightsDownloadError(
            f"the download of {url} is truncated: {received} of the {total} bytes announced arrived (not cached)"
        )
