"""Where Label Studio hosts media, and the token to fetch it with.

Label Studio hands a backend its base URL and an access token at ``/setup``. Media links in its
tasks are relative (``/data/upload/...``, ``/data/local-files/?d=...``), so labelloop stores them
resolved against the project's URL, and :mod:`labelloop.fetch` adds the token only to links below
a Label Studio URL it knows. Tokens live in one file under the data root, readable by the owner
only, so that worker processes (and, in a cluster, other machines on the shared folder) can fetch
too; they are never logged, returned or kept in the store.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

from labelloop.config import Settings
from labelloop.datastore import write_bytes_atomic
from labelloop.errors import FetchError, InvalidInput

#: Path prefixes under which Label Studio serves media (uploads, local files, presigned storage).
HOSTED_PREFIXES = ("/data/", "/tasks/", "/storage-data/")
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
    return link.startswith(HOSTED_PREFIXES)


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


def hosted_request(link: str, settings: Settings) -> tuple[str, dict[str, str]] | None:
    """For a link Label Studio hosts: the URL to fetch and its auth header; ``None`` otherwise.

    Relative links use the URL from the settings (``LABELLOOP_LABELSTUDIO_URL``); absolute ones
    get the token of the Label Studio URL they start with, from setup or from the settings.
    """
    known = tokens(settings)
    default = normalize_url(settings.labelstudio_url) if settings.labelstudio_url else None
    if default is not None and settings.labelstudio_token is not None:
        known.setdefault(default, settings.labelstudio_token.get_secret_value())
    if is_hosted(link):
        local = Path(link.split("?", 1)[0])
        if any(local.resolve().is_relative_to(root) for root in settings.allowed_roots):
            return None  # a file below an import root that happens to live in /data/...
        if default is None:
            raise FetchError(
                f"{link!r} is a Label Studio media link, but labelloop does not know where that "
                "Label Studio runs: connect the project to labelloop (its /setup sends the URL) "
                "or set LABELLOOP_LABELSTUDIO_URL and LABELLOOP_LABELSTUDIO_TOKEN"
            )
        link = resolve(link, default)
    elif not link.startswith(("http://", "https://")):
        return None
    for base, token in known.items():
        if link.startswith(base + "/"):
            return link, {"Authorization": f"Token {token}"}
    if default is not None and link.startswith(default + "/"):
        return link, {}
    return None
