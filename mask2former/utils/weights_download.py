"""Weight sources for MODEL.WEIGHTS: a local file, an http(s) URL, or the original's `detectron2://` prefix.

`resolve_weights(path_or_url)` returns a local path:
- a local path is returned as is (made absolute) if the file exists;
- `detectron2://X` means `https://dl.fbaipublicfiles.com/detectron2/X`, as in Detectron2;
- a URL is downloaded once into the cache folder (`cache_dir`, else `$MASK2FORMER_CACHE`, else
  `~/.cache/mask2former`), at `<cache>/<host>/<path of the URL>`, with a progress bar. The download
  goes to a temporary file in the same folder and is renamed into place only after its hash is
  checked, so an interrupted or corrupt download never sits at the cache path.

Hash check, from the file name (the conventions of the files users download):
- `model_final_94dc52.pkl` (Detectron2 / Mask2Former model zoo): 6 hex digits after the last `_`
  are the start of the file's MD5;
- `resnet50-0676ba61.pth` (torchvision, torch.hub): 8 or more hex digits after the last `-` are the
  start of the file's SHA-256.
A name without such a suffix (`R-50.pkl`) is downloaded without a check.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

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


def resolve_weights(path_or_url: str, cache_dir: str | None = None) -> str:
    """A local path for MODEL.WEIGHTS-style input: a local file, an http(s) URL or `detectron2://...`.

    URLs are downloaded once into `cache_dir` (default: `$MASK2FORMER_CACHE` or ~/.cache/mask2former)
    and checked against the hash prefix in their file name (see the module doc).

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
    if os.path.isfile(target):
        logger.info("Using cached %s for %s", target, url)
        return target
    _download(url, target)
    return target


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


def _download(url: str, target: str) -> None:
    """Stream `url` into a temporary file next to `target`, check its hash, then rename it into place."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    check = expected_hash(target)
    digest = hashlib.new(check[0]) if check else None
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(target), prefix=os.path.basename(target) + ".", suffix=".part"
    )
    try:
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=os.path.basename(target)
                ) as bar:
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
                        if digest is not None:
                            digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise WeightsDownloadError(
                f"could not download {url} ({reason}). Without network access, download that file on "
                f"another machine and put it at {target} (or set MODEL.WEIGHTS to a local path)"
            ) from e
        if check is not None:
            actual = digest.hexdigest()
            if not actual.startswith(check[1]):
                raise WeightsHashError(
                    f"{os.path.basename(target)} downloaded from {url} has {check[0]} {actual}, but its name "
                    f"expects a hash starting with {check[1]}; the download was deleted"
                )
        os.replace(tmp, target)
        logger.info("Downloaded %s to %s", url, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
