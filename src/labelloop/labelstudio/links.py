"""Where Label Studio hosts media, and the token to fetch it with.

Label Studio hands a backend its base URL and an access token at ``/setup``. Media links in its
tasks are relative (``/data/upload/...``, ``/data/local-files/?d=...``), so labelloop stores them
resolved against the project's URL. The token goes only with requests for Label Studio's *media
paths* (:data:`MEDIA_PREFIXES`) below the URL it belongs to, never with any other path (its API,
its pages) or host, and never along a redirect elsewhere: :mod:`labelloop.fetch` asks
:func:`token_for` again at every hop. The same media paths below the operator's Label Studio URL
may be fetched although that URL is a local address (:func:`exempt`); nothing else under it may.

Tokens live in one file under the data root, readable by the owner only, so that worker processes
(and, in a cluster, other machines on the shared folder) can fetch too; they are never logged,
returned or kept in the store.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx

from labelloop.config import Settings
from labelloop.datastore import write_bytes_atomic
from labelloop.errors import FetchError, InvalidInput

#: Path prefixes under which Label Studio serves media (uploads, local files, cloud storage).
MEDIA_PREFIXES = ("/data/upload/", "/data/local-files/", "/storage-data/")
FILENAME = "labelstudio/credentials.json"

_lock = threading.Lock()
_cache: dict[Path, tuple[float, dict[str, str]]] = {}


def normalize_url(url: str) -> str:
    """``scheme://host[:port][/path]`` without a trailing slash; refuses anything else."""
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidInput(f"not a Label Studio URL (http or https with a host): {url!r}")
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"


def is_hosted(link: str) -> bool:
    """A relative Label Studio media link (``/data/upload/...``)."""
    return link.startswith(MEDIA_PREFIXES)


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host.lower(), url.port or (443 if url.scheme == "https" else 80)


def media_base(url: str, bases: Iterable[str]) -> str | None:
    """The base URL (of ``bases``) below which ``url`` is a Label Studio media path, else ``None``.

    Compared by parts (scheme, host, port, path), so ``http://ls:8080.evil.example/`` is not below
    ``http://ls:8080``, and a path that climbs out (``/data/upload/../../api/...``, also encoded)
    is not a media path.
    """
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    path = target.path
    if "\\" in path or any(seg in (".", "..") for seg in path.split("/")):
        return None
    for base in bases:
        try:
            parsed = httpx.URL(base)
        except (httpx.InvalidURL, TypeError, ValueError):
            continue
        if _origin(parsed) != _origin(target):
            continue
        prefix = parsed.path.rstrip("/")
        if path.startswith(tuple(prefix + m for m in MEDIA_PREFIXES)):
            return base
    return None


def resolve(link: str, base_url: str | None) -> str:
    """A hosted (relative) media link made absolute against ``base_url``; others unchanged."""
    if base_url and is_hosted(link):
        return urljoin(normalize_url(base_url) + "/", link.lstrip("/"))
    return link


def _path(settings: Settings) -> Path:
    return settings.resolved_data_dir / FILENAME


def tokens(settings: Settings) -> dict[str, str]:
    """Label Studio URL -> token, as written by ``remember``; re-read only when the file changes."""
    path = _path(settings)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return {}
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == mtime:
            return dict(cached[1])
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        table = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        _cache[path] = (mtime, table)
        return dict(table)


def remember(settings: Settings, url: str, token: str | None) -> None:
    """Record (or, with no token, forget) the token of the Label Studio at ``url``."""
    base = normalize_url(url)
    with _lock:
        path = _path(settings)
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = {}
        if not isinstance(current, dict):
            current = {}
        if token:
            if current.get(base) == token:
                return
            current[base] = token
        elif base in current:
            del current[base]
        else:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, json.dumps(current).encode())
        os.chmod(path, 0o600)
        _cache.pop(path, None)


def _default(settings: Settings) -> str | None:
    return normalize_url(settings.labelstudio_url) if settings.labelstudio_url else None


def known_tokens(settings: Settings) -> dict[str, str]:
    """Label Studio URL -> token: those from setup, and the one from the settings."""
    known = tokens(settings)
    default = _default(settings)
    if default is not None and settings.labelstudio_token is not None:
        known.setdefault(default, settings.labelstudio_token.get_secret_value())
    return known


def token_for(url: str, settings: Settings) -> dict[str, str]:
    """The auth header for ``url`` if it is a media path below a Label Studio with a token."""
    known = known_tokens(settings)
    base = media_base(url, known)
    return {} if base is None else {"Authorization": f"Token {known[base]}"}


def exempt(url: str, settings: Settings) -> bool:
    """Whether ``url`` is a media path of the operator's Label Studio, which may be fetched even
    on a local address: the one ``LABELLOOP_LABELSTUDIO_URL`` names or, when it is not set, those
    that connected through ``/setup`` with a token."""
    default = _default(settings)
    bases = [default] if default is not None else list(tokens(settings))
    return media_base(url, bases) is not None


def _below_import_root(link: str, settings: Settings) -> bool:
    try:
        local = Path(link.split("?", 1)[0]).resolve()
    except (OSError, ValueError):
        return False
    return any(local.is_relative_to(root) for root in settings.allowed_roots)


def hosted_request(link: str, settings: Settings) -> tuple[str, dict[str, str]] | None:
    """For a link Label Studio hosts: the URL to fetch and its auth header; ``None`` otherwise.

    Relative links use the URL from the settings (``LABELLOOP_LABELSTUDIO_URL``); absolute ones
    get the token of the Label Studio URL they are a media path of, from setup or the settings.
    """
    default = _default(settings)
    if is_hosted(link):
        if _below_import_root(link, settings):
            return None  # a file below an import root that happens to live in /data/upload/...
        if default is None:
            raise FetchError(
                f"{link!r} is a Label Studio media link, but labelloop does not know where that "
                "Label Studio runs: connect the project to labelloop (its /setup sends the URL) "
                "or set LABELLOOP_LABELSTUDIO_URL and LABELLOOP_LABELSTUDIO_TOKEN"
            )
        link = resolve(link, default)
    elif not link.startswith(("http://", "https://")):
        return None
    headers = token_for(link, settings)
    if headers:
        return link, headers
    if default is not None and media_base(link, [default]) is not None:
        return link, {}
    return None
