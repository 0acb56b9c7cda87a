"""Reading data links: local paths and ``file://`` below the import roots, ``http(s)://``, inline text.

Every limit is enforced while reading (size, time-out, content type), and every failure becomes a
:class:`~labelloop.errors.FetchError` with a reason a person can act on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from labelloop.config import Settings
from labelloop.errors import FetchError, ForbiddenPath, PayloadTooLarge

IMAGE_TYPES = ("image/",)
GENERIC_TYPES = ("application/octet-stream", "binary/octet-stream")


@dataclass(frozen=True)
class Content:
    """The bytes (or text) behind a data link, with the hash that keys every cache."""

    raw: bytes
    content_hash: str
    source: str


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def text_content(text: str) -> Content:
    raw = text.encode("utf-8")
    return Content(raw=raw, content_hash=content_hash(raw), source="inline")


def _local_path(link: str) -> Path:
    if link.startswith("file://"):
        parsed = urlparse(link)
        if parsed.netloc not in ("", "localhost"):
            raise FetchError(f"file link names a remote host: {link!r}")
        return Path(unquote(parsed.path))
    return Path(link)


def read_local(link: str, settings: Settings) -> Content:
    path = _local_path(link).expanduser()
    if not path.is_absolute():
        raise FetchError(f"local paths must be absolute: {link!r}")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in settings.allowed_roots):
        raise ForbiddenPath(
            f"{link!r} is outside the import roots; the operator can allow its folder with "
            "--import-root or LABELLOOP_IMPORT_ROOTS"
        )
    try:
        size = resolved.stat().st_size
        if size > settings.fetch_max_bytes:
            raise PayloadTooLarge(f"{link!r} is {size} bytes, over {settings.fetch_max_bytes}")
        raw = resolved.read_bytes()
    except FileNotFoundError:
        raise FetchError(f"no such file: {link!r}") from None
    except IsADirectoryError:
        raise FetchError(f"is a folder, not a file: {link!r}") from None
    except PermissionError:
        raise FetchError(f"cannot read {link!r}: permission denied") from None
    return Content(raw=raw, content_hash=content_hash(raw), source=link)


def read_http(
    link: str,
    settings: Settings,
    headers: dict[str, str] | None = None,
    accept: tuple[str, ...] = IMAGE_TYPES,
) -> Content:
    limit = settings.fetch_max_bytes
    try:
        with (
            httpx.Client(timeout=settings.fetch_timeout_s, follow_redirects=True) as client,
            client.stream("GET", link, headers=headers or {}) as resp,
        ):
            if resp.status_code != 200:
                raise FetchError(f"{link!r} answered HTTP {resp.status_code}")
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith(accept) and ctype not in GENERIC_TYPES:
                raise FetchError(f"{link!r} has content type {ctype!r}, expected {accept[0]}*")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"{link!r} is {declared} bytes, over {limit}")
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"{link!r} is over {limit} bytes")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise FetchError(f"{link!r} timed out after {settings.fetch_timeout_s} s") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"cannot fetch {link!r}: {type(exc).__name__}") from None
    raw = b"".join(chunks)
    return Content(raw=raw, content_hash=content_hash(raw), source=link)


def labelstudio_link(link: str, settings: Settings) -> tuple[str, dict[str, str]] | None:
    """Media hosted by Label Studio (``/data/upload/...``) is fetched with its URL and token.

    The URL and token come from the project's setup call or from the settings; see
    :mod:`labelloop.labelstudio.links`.
    """
    from labelloop.labelstudio.links import hosted_request

    return hosted_request(link, settings)


def read_link(link: str, settings: Settings) -> Content:
    """The bytes behind an image link, from wherever it lives."""
    link = link.strip()
    if not link:
        raise FetchError("empty data link")
    hosted = labelstudio_link(link, settings)
    if hosted is not None:
        return read_http(hosted[0], settings, headers=hosted[1])
    scheme = urlparse(link).scheme.lower()
    if scheme in ("http", "https"):
        return read_http(link, settings)
    if scheme in ("", "file"):
        return read_local(link, settings)
    raise FetchError(f"unsupported link scheme {scheme!r} in {link!r}")
