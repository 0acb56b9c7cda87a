"""Where Label Studio hosts media, and the token to fetch it with.

Label Studio hands a backend its base URL and an access token at ``/setup``. Media links in its
tasks are relative (``/data/upload/...``, ``/data/local-files/?d=...``), and labelloop stores them
relative (an absolute link below the project's URL is made relative too), so that where Label
Studio is reached is decided when the media is read: the operator's ``LABELLOOP_LABELSTUDIO_URL``
when set (it wins: the address Label Studio sends at setup, from its ``LABEL_STUDIO_HOST``, is
often one labelloop cannot reach, as in Docker or behind a reverse proxy), else the URL the
project sent at setup (kept in the task's folder, :func:`remember_project`). Links stored
absolute by older versions (below the project's setup URL) are moved onto the operator's URL the
same way (:func:`rebase`).

The token goes only with requests for Label Studio's *media paths* (:data:`MEDIA_PREFIXES`) below
the URL it belongs to, never with any other path (its API, its pages) or host, and never along a
redirect elsewhere: :mod:`labelloop.fetch` asks :func:`token_for` again at every hop. A legacy
token goes as ``Token <key>``; a personal access token (Label Studio's default: a JWT refresh
token) is exchanged at ``/api/token/refresh`` for a short-lived access token sent as
``Bearer <access>`` (:func:`auth_header`). The same media paths below the operator's Label Studio
URL may be fetched although that URL is a local address (:func:`exempt`); nothing else under it
may.

Tokens live in one file under the data root, readable by the owner only, so that worker processes
(and, in a cluster, other machines on the shared folder) can fetch too; they are never logged,
returned or kept in the store.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx

from labelloop.config import Settings
from labelloop.datastore import TaskFolder, write_bytes_atomic
from labelloop.errors import FetchError, InvalidInput

#: Path prefixes under which Label Studio serves media (uploads, local files, cloud storage).
MEDIA_PREFIXES = ("/data/upload/", "/data/local-files/", "/storage-data/")
FILENAME = "labelstudio/credentials.json"
#: In a task's folder: the Label Studio URL its project sent at setup.
PROJECT_FILE = "labelstudio.json"
#: Where Label Studio exchanges a personal access token (a JWT refresh token) for an access token.
REFRESH_PATH = "/api/token/refresh"
#: An access token is renewed this long before it expires.
RENEW_BEFORE_S = 30.0

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


def relative(link: str, bases: Iterable[str | None]) -> str:
    """A media link below one of ``bases`` as Label Studio writes it (``/data/upload/...``), so
    that it is stored relative; any other link unchanged."""
    base = media_base(link, [b for b in bases if b])
    if base is None:
        return link
    url = httpx.URL(link)
    prefix = httpx.URL(base).path.rstrip("/")
    path = url.raw_path.decode("ascii")
    return path[len(prefix) :] if prefix and path.startswith(prefix) else path


def remember_project(folder: TaskFolder, url: str | None) -> None:
    """Keep the URL a project sent at setup in its task's folder (every process that fetches for
    the task reads it there)."""
    if not url:
        return
    base = normalize_url(url)
    if project_url(folder) == base:
        return
    folder.path.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(folder.path / PROJECT_FILE, json.dumps({"url": base}).encode())


def project_url(folder: TaskFolder | None) -> str | None:
    """The URL the task's Label Studio project sent at setup, if any."""
    if folder is None:
        return None
    try:
        url = json.loads((folder.path / PROJECT_FILE).read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


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
    """Label Studio URL -> token: those from setup, and the one from the settings (which wins
    for the operator's URL)."""
    known = tokens(settings)
    default = _default(settings)
    if default is not None and settings.labelstudio_token is not None:
        known[default] = settings.labelstudio_token.get_secret_value()
    return known


def is_jwt(token: str) -> bool:
    """A personal access token (a JWT) rather than a legacy token (a hex key)."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        head = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(head, dict) and "alg" in head


def _expiry(jwt: str) -> float | None:
    try:
        part = jwt.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))).get("exp")
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError, AttributeError):
        return None
    return float(exp) if isinstance(exp, int | float) else None


#: (Label Studio URL, refresh token) -> (expires at, access token), per process.
_access: dict[tuple[str, str], tuple[float, str]] = {}


def _access_token(base: str, refresh: str, settings: Settings) -> str:
    """An access token for a personal access token, renewed shortly before it expires."""
    now = time.time()
    with _lock:
        cached = _access.get((base, refresh))
    if cached is not None and cached[0] - RENEW_BEFORE_S > now:
        return cached[1]
    where = f"{base}{REFRESH_PATH}"
    try:
        with httpx.Client(
            timeout=settings.fetch_timeout_s, trust_env=False, follow_redirects=False
        ) as client:
            resp = client.post(where, json={"refresh": refresh})
    except httpx.HTTPError:
        raise FetchError(
            f"cannot reach Label Studio at {base} to exchange its personal access token "
            f"({REFRESH_PATH})",
            cause="unreachable",
        ) from None
    access = None
    if resp.status_code == 200:
        try:
            access = resp.json().get("access")
        except (ValueError, AttributeError):
            access = None
    if not isinstance(access, str) or not access:
        raise FetchError(
            f"Label Studio at {base} did not accept the personal access token (HTTP "
            f"{resp.status_code} from {REFRESH_PATH}): create a new one in its Account & Settings "
            "and connect the model again, or set LABELLOOP_LABELSTUDIO_TOKEN",
            cause="token_refused",
        )
    expires = _expiry(access) or now + 240.0
    with _lock:
        _access[(base, refresh)] = (expires, access)
    return access


def auth_header(base: str, token: str, settings: Settings, exchange: bool = True) -> dict[str, str]:
    """``Token <key>`` for a legacy token; for a personal access token, ``Bearer`` with an access
    token (exchanged only when ``exchange``: checks before storing make no request)."""
    if not is_jwt(token):
        return {"Authorization": f"Token {token}"}
    if not exchange:
        return {}
    return {"Authorization": f"Bearer {_access_token(base, token, settings)}"}


def token_for(url: str, settings: Settings, exchange: bool = True) -> dict[str, str]:
    """The auth header for ``url`` if it is a media path below a Label Studio with a token."""
    known = known_tokens(settings)
    base = media_base(url, known)
    return {} if base is None else auth_header(base, known[base], settings, exchange)


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


def rebase(link: str, settings: Settings, task: TaskFolder | None = None) -> str:
    """An absolute media link below the URL the task's project sent at setup (as older versions
    stored them), moved onto ``LABELLOOP_LABELSTUDIO_URL`` when the operator set one: the setting
    wins. Links to another Label Studio keep their own address."""
    default = _default(settings)
    sent = project_url(task)
    if default is None or sent is None or sent == default:
        return link
    if not link.startswith(("http://", "https://")) or media_base(link, [sent]) is None:
        return link
    return resolve(relative(link, [sent]), default)


def hosted_request(
    link: str, settings: Settings, task: TaskFolder | None = None, exchange: bool = True
) -> tuple[str, dict[str, str]] | None:
    """For a link Label Studio hosts: the URL to fetch and its auth header; ``None`` otherwise.

    Relative links are read from ``LABELLOOP_LABELSTUDIO_URL`` when it is set, else from the URL
    the task's project sent at setup; absolute ones below a setup URL move onto the setting too.
    The token is the one of the Label Studio URL fetched from (setup's, or the settings').
    """
    default = _default(settings)
    if is_hosted(link):
        if _below_import_root(link, settings):
            return None  # a file below an import root that happens to live in /data/upload/...
        base = default or project_url(task)
        if base is None:
            raise FetchError(
                f"{link!r} is a Label Studio media link, but labelloop does not know where that "
                "Label Studio runs: connect the project to labelloop (its /setup sends the URL) "
                "or set LABELLOOP_LABELSTUDIO_URL and LABELLOOP_LABELSTUDIO_TOKEN",
                cause="no_labelstudio_url",
            )
        link = resolve(link, base)
    elif not link.startswith(("http://", "https://")):
        return None
    else:
        link = rebase(link, settings, task)
    bases = [*known_tokens(settings), *(b for b in (default, project_url(task)) if b)]
    if media_base(link, bases) is None:
        return None
    return link, token_for(link, settings, exchange)
