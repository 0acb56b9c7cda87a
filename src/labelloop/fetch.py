"""Reading data links: local paths and ``file://`` below the import roots, a task's own uploads
(``upload:<name>``), ``http(s)://`` on public addresses, Label Studio media, inline text.

What a link may reach is decided here, once, for the API (at item creation, :func:`check_link`)
and for every process that reads (:func:`read_link`):

- local paths only below the import roots; the data root (store, tokens, other tasks' files) is
  never one. A task's uploads are named by reference and read from that task's folder only.
- ``http(s)``: the host is resolved once and every address it resolves to must be public (not
  loopback, private, link-local, multicast, unspecified, reserved, nor an IPv4 address of those
  kinds inside an IPv6 one) unless ``LABELLOOP_FETCH_ALLOW_HOSTS`` names the host or its network.
  The request then goes to the address that was checked (the ``Host`` header and TLS server name
  keep the name), so a second DNS answer cannot redirect it; redirects are followed here, one hop
  at a time, each checked the same way. Size and time are capped for the whole fetch.

Every failure becomes a :class:`~labelloop.errors.FetchError` with a reason a person can act on.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import ipaddress
import logging
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
from PIL import Image, UnidentifiedImageError

from labelloop.config import Settings
from labelloop.datastore import TaskFolder, write_bytes_atomic
from labelloop.errors import (
    FetchError,
    ForbiddenAddress,
    ForbiddenPath,
    InvalidInput,
    PayloadTooLarge,
)

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/",)
#: In a task's folder: remote images as they were fetched, keyed by the hash of their link.
FETCHED = "Fetched"
GENERIC_TYPES = ("application/octet-stream", "binary/octet-stream")
#: An item of an image task names its uploaded file as ``upload:<sha256>.<ext>``.
UPLOAD_PREFIX = "upload:"
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
#: Image formats labelloop reads and serves back, with the media type a browser shows.
IMAGE_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # what many cameras write: a JPEG with more pictures after it
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
#: Refused before decoding: a small file can declare a huge canvas (a decompression bomb).
MAX_IMAGE_PIXELS = 64_000_000

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class Content:
    """The bytes (or text) behind a data link, with the hash that keys every cache."""

    raw: bytes
    content_hash: str
    source: str
    #: For images: the type of their format (``image/png``...), checked when they were read.
    media_type: str | None = None


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def text_content(text: str) -> Content:
    raw = text.encode("utf-8")
    return Content(raw=raw, content_hash=content_hash(raw), source="inline")


# --- images -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mime: str
    width: int
    height: int


def identify_image(raw: bytes, verify: bool = False) -> ImageInfo:
    """What an image is, from its header (and, with ``verify``, its whole structure); an error in
    people's words when it is not an image of :data:`IMAGE_FORMATS` or declares too many pixels."""
    kinds = ", ".join(IMAGE_FORMATS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:
                fmt, (width, height) = (img.format or "").upper(), img.size
                if fmt in IMAGE_FORMATS and width * height <= MAX_IMAGE_PIXELS and verify:
                    img.verify()
    except Image.DecompressionBombError:
        raise FetchError(
            f"the image declares more than {MAX_IMAGE_PIXELS:,} pixels; labelloop refuses it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise FetchError(f"not an image labelloop can read ({kinds}), or a damaged one") from None
    if fmt not in IMAGE_FORMATS:
        raise FetchError(f"a {fmt or 'unknown'} image; labelloop reads {kinds}")
    if width * height > MAX_IMAGE_PIXELS:
        raise FetchError(
            f"the image declares {width}x{height} pixels, over the limit of "
            f"{MAX_IMAGE_PIXELS:,}; labelloop refuses it"
        )
    return ImageInfo(fmt, IMAGE_FORMATS[fmt], width, height)


# --- local files ----------------------------------------------------------------------------------


def _no_controls(link: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in link):
        raise FetchError("a data link cannot contain control characters (NUL, newline, …)")


def _local_path(link: str) -> Path:
    if link.startswith("file://"):
        parsed = urlparse(link)
        if parsed.netloc not in ("", "localhost"):
            raise FetchError(f"file link names a remote host: {link!r}")
        return Path(unquote(parsed.path))
    return Path(link)


def local_allowed(resolved: Path, settings: Settings) -> bool:
    """Whether a resolved local path may be read: below an import root, never in the data root
    (an import root may hold the data root; its store, tokens and uploads stay out of reach)."""
    if resolved.is_relative_to(settings.resolved_data_dir):
        return False
    return any(resolved.is_relative_to(root) for root in settings.allowed_roots)


def _local_target(link: str, settings: Settings, task: TaskFolder | None) -> Path:
    """The file a local link names, if it lies below an import root (or, for links stored before
    uploads were named by reference, in ``task``'s own uploads)."""
    path = _local_path(link)
    if "\x00" in str(path):
        raise FetchError("a path cannot contain a NUL character")
    try:
        path = path.expanduser()
        if not path.is_absolute():
            raise FetchError(f"local paths must be absolute: {link!r}")
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):
        raise FetchError(f"not a usable path: {link!r}") from None
    if local_allowed(resolved, settings):
        return resolved
    if task is not None and resolved.is_relative_to(task.uploads.resolve()):
        return resolved
    if resolved.is_relative_to(settings.resolved_data_dir):
        raise ForbiddenPath(
            f"{link!r} is in labelloop's data folder, which links cannot name; upload the "
            "image instead, or link to it below an import root"
        )
    raise ForbiddenPath(
        f"{link!r} is outside the import roots; the operator can allow its folder with "
        "--import-root or LABELLOOP_IMPORT_ROOTS"
    )


def _upload_target(link: str, task: TaskFolder | None) -> Path:
    if task is None:
        raise ForbiddenPath(f"{link!r} names an upload, which only its own task can read")
    try:
        return task.upload_path(link[len(UPLOAD_PREFIX) :])
    except InvalidInput as exc:
        raise FetchError(exc.message) from None


def _read_file(path: Path, link: str, settings: Settings) -> Content:
    try:
        size = path.stat().st_size
        if size > settings.fetch_max_bytes:
            raise PayloadTooLarge(f"{link!r} is {size} bytes, over {settings.fetch_max_bytes}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FetchError(f"no such file: {link!r}") from None
    except IsADirectoryError:
        raise FetchError(f"is a folder, not a file: {link!r}") from None
    except PermissionError:
        raise FetchError(f"cannot read {link!r}: permission denied") from None
    except OSError:
        raise FetchError(f"cannot read {link!r}") from None
    return Content(raw=raw, content_hash=content_hash(raw), source=link)


def read_local(link: str, settings: Settings, task: TaskFolder | None = None) -> Content:
    return _read_file(_local_target(link, settings, task), link, settings)


# --- addresses ----------------------------------------------------------------------------------


def _embedded(ip: Address) -> list[Address]:
    """The address and the IPv4 addresses it carries (mapped, 6to4, Teredo, NAT64)."""
    out: list[Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            out.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            out.append(ip.sixtofour)
        if ip.teredo is not None:
            out.extend(ip.teredo)
        if any(ip in net for net in _NAT64):
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def refusal(ip: Address) -> str | None:
    """Why labelloop does not fetch from ``ip`` by default, or ``None`` for a public address."""
    for a in reversed(_embedded(ip)):
        for kind, bad in (
            ("loopback", a.is_loopback),
            ("unspecified", a.is_unspecified),
            ("link-local", a.is_link_local),
            ("multicast", a.is_multicast),
            ("private", a.is_private),
            ("reserved", a.is_reserved),
            ("site-local", isinstance(a, ipaddress.IPv6Address) and a.is_site_local),
            ("non-public", not a.is_global),
        ):
            if bad:
                return f"a {kind} address"
    return None


@dataclass(frozen=True)
class AllowList:
    """``LABELLOOP_FETCH_ALLOW_HOSTS``: host names, and networks (an address is a /32 or /128)."""

    names: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def of(cls, settings: Settings) -> AllowList:
        names: set[str] = set()
        nets = []
        for entry in settings.fetch_allow_hosts:
            e = entry.strip().lower()
            try:
                nets.append(ipaddress.ip_network(e.strip("[]"), strict=False))
            except ValueError:
                names.add(e.rstrip("."))
        return cls(frozenset(names), tuple(nets))

    def admits(self, host: str, ip: Address) -> bool:
        if host.lower().rstrip(".") in self.names:
            return True
        return any(
            a in net for a in _embedded(ip) for net in self.networks if a.version == net.version
        )


def _addresses(host: str, port: int) -> list[Address] | None:
    """Every address ``host`` resolves to (one lookup), or ``None`` when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return None
    out: list[Address] = []
    for info in infos:
        try:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except ValueError:
            continue
        if ip not in out:
            out.append(ip)
    return out or None


@dataclass(frozen=True)
class Target:
    """An http(s) URL that passed the checks, and the checked addresses to send it to (tried in
    the resolver's order, as a connection by name would)."""

    url: httpx.URL
    addresses: tuple[Address, ...]
    headers: dict[str, str] = field(default_factory=dict)

    def request_url(self, address: Address) -> httpx.URL:
        return self.url.copy_with(host=str(address))

    def request_headers(self) -> dict[str, str]:
        return {**self.headers, "Host": self.url.netloc.decode("ascii")}


def _parse_http(link: str) -> httpx.URL:
    try:
        url = httpx.URL(link)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise FetchError(f"not a valid URL: {link!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise FetchError(f"not an http(s) URL with a host: {link!r}")
    return url


def check_url(
    link: str,
    settings: Settings,
    need_address: bool = True,
    resolve: Callable[[str, int], list[Address] | None] | None = None,
) -> Target | None:
    """Resolve the host of an http(s) link once and check every address; the target to connect to.

    Raises :class:`ForbiddenAddress` for a refused address. A host that does not resolve fails
    with a :class:`FetchError`, or gives ``None`` when ``need_address`` is false (item creation:
    the fetch reports it later, and checks again).
    """
    from labelloop.labelstudio import links

    url = _parse_http(link)
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = (resolve or _addresses)(url.host, port)
    if addresses is None:
        if need_address:
            raise FetchError(f"cannot resolve the host of {link!r}")
        return None
    if not links.exempt(link, settings):
        allow = AllowList.of(settings)
        for ip in addresses:
            reason = refusal(ip)
            if reason is not None and not allow.admits(url.host, ip):
                raise ForbiddenAddress(
                    f"{link!r} names {reason}; labelloop fetches only from public addresses "
                    "unless the operator lists the host or its network in "
                    "LABELLOOP_FETCH_ALLOW_HOSTS"
                )
    return Target(url, tuple(addresses), links.token_for(link, settings, exchange=need_address))


# --- http ---------------------------------------------------------------------------------------


def _http_failure(link: str, exc: httpx.HTTPError, settings: Settings) -> FetchError:
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"{link!r} timed out after {settings.fetch_timeout_s} s", "timeout")
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return FetchError(f"cannot fetch {link!r}: its TLS certificate is not valid", "tls")
        return FetchError(f"cannot fetch {link!r}: the server does not answer", "unreachable")
    if isinstance(exc, httpx.RemoteProtocolError):
        return FetchError(f"cannot fetch {link!r}: the server broke off the answer", "broken")
    return FetchError(f"cannot fetch {link!r}: the connection failed", "unreachable")


@contextmanager
def _stream(
    client: httpx.Client, target: Target, extensions: dict[str, Any]
) -> Iterator[httpx.Response]:
    """The answer of the first checked address that takes the connection."""
    with ExitStack() as stack:
        for n, address in enumerate(target.addresses):
            try:
                resp = stack.enter_context(
                    client.stream(
                        "GET",
                        target.request_url(address),
                        headers=target.request_headers(),
                        extensions=extensions,
                    )
                )
                break
            except httpx.ConnectError as exc:
                if n == len(target.addresses) - 1 or "CERTIFICATE" in str(exc):
                    raise
        yield resp


def _get(
    target: Target, settings: Settings, accept: tuple[str, ...], deadline: float
) -> bytes | httpx.URL:
    """One GET to the checked address (a client of its own: no connection is shared between
    hops); the body, or where a redirect points."""
    url = str(target.url)
    limit = settings.fetch_max_bytes
    timeout = max(0.001, min(settings.fetch_timeout_s, deadline - time.monotonic()))
    extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
    with (
        httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
        _stream(client, target, extensions) as resp,
    ):
        if resp.status_code in REDIRECTS:
            location = resp.headers.get("location")
            if not location:
                raise FetchError(f"{url!r} redirects without saying where")
            return target.url.join(location)
        if resp.status_code != 200:
            raise FetchError(
                f"{url!r} answered HTTP {resp.status_code}", f"http_{resp.status_code}"
            )
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and not ctype.startswith(accept) and ctype not in GENERIC_TYPES:
            raise FetchError(
                f"{url!r} has content type {ctype!r}, expected {accept[0]}*", "wrong_type"
            )
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"{url!r} is {declared} bytes, over {limit}")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"{url!r} is over {limit} bytes")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the whole fetch took too long")
            chunks.append(chunk)
        return b"".join(chunks)


def read_http(link: str, settings: Settings, accept: tuple[str, ...] = IMAGE_TYPES) -> Content:
    """GET an http(s) link, checking the address of every hop; one time limit covers them all."""
    deadline = time.monotonic() + settings.fetch_timeout_s
    url = link
    try:
        for _ in range(MAX_REDIRECTS + 1):
            target = check_url(url, settings)
            assert target is not None  # need_address: an unresolved host raised
            got = _get(target, settings, accept, deadline)
            if isinstance(got, bytes):
                return Content(raw=got, content_hash=content_hash(got), source=link)
            url = str(got)
    except httpx.HTTPError as exc:
        raise _http_failure(link, exc, settings) from None
    raise FetchError(f"{link!r} redirects more than {MAX_REDIRECTS} times")


# --- any link -----------------------------------------------------------------------------------


def labelstudio_link(
    link: str, settings: Settings, task: TaskFolder | None = None, exchange: bool = True
) -> tuple[str, dict[str, str]] | None:
    """Media hosted by Label Studio (``/data/upload/...``) is fetched with its URL and token.

    The URL and token come from the settings or from the project's setup call; see
    :mod:`labelloop.labelstudio.links`.
    """
    from labelloop.labelstudio.links import hosted_request

    return hosted_request(link, settings, task, exchange)


def _read_any(link: str, settings: Settings, task: TaskFolder | None) -> Content:
    link = link.strip()
    if not link:
        raise FetchError("empty data link")
    _no_controls(link)
    if link.startswith(UPLOAD_PREFIX):
        return _read_file(_upload_target(link, task), link, settings)
    hosted = labelstudio_link(link, settings, task)
    if hosted is not None:
        return read_http(hosted[0], settings)
    scheme = urlparse(link).scheme.lower()
    if scheme in ("http", "https"):
        return read_http(link, settings)
    if scheme in ("", "file"):
        return read_local(link, settings, task)
    raise FetchError(f"unsupported link scheme {scheme!r} in {link!r}")


def _read_image(link: str, settings: Settings, task: TaskFolder | None) -> Content:
    content = _read_any(link, settings, task)
    try:
        kind = identify_image(content.raw)
    except FetchError as exc:
        raise FetchError(f"{link.strip()!r}: {exc.message}", "not_an_image") from None
    return Content(content.raw, content.content_hash, content.source, kind.mime)


def _is_remote(link: str) -> bool:
    from labelloop.labelstudio.links import is_hosted

    link = link.strip()
    return is_hosted(link) or urlparse(link).scheme.lower() in ("http", "https")


def _stored_path(link: str, task: TaskFolder) -> Path:
    key = hashlib.sha256(link.strip().encode("utf-8")).hexdigest()
    return task.path / FETCHED / key[:2] / key


def _read_stored(link: str, settings: Settings, task: TaskFolder) -> Content:
    """A remote image is fetched once per task: the first reader (a prediction request, or the
    featurize job) stores it in the task's folder, under a lock, and every later read (and any
    reader that waited on the lock) takes the stored bytes."""
    path = _stored_path(link, task)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        pass
    else:
        return Content(raw, content_hash(raw), link.strip(), identify_image(raw).mime)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            content = _read_image(link, settings, task)
            write_bytes_atomic(path, content.raw, durable=False)
            return content
    return Content(raw, content_hash(raw), link.strip(), identify_image(raw).mime)


#: Fetch failures by cause, in this process (``labelloop_fetch_failures_total`` in /metrics).
_failures: Counter[str] = Counter()
_logged: set[tuple[str, str]] = set()
_failures_lock = threading.Lock()


def fetch_failures() -> dict[str, int]:
    """How many reads failed in this process, by cause."""
    with _failures_lock:
        return dict(_failures)


def _place(link: str, settings: Settings, task: TaskFolder | None) -> str:
    """Where a link points: the host and port it is fetched from, else the kind of link."""
    link = link.strip()
    try:
        hosted = labelstudio_link(link, settings, task, exchange=False)
    except FetchError:
        hosted = None
    netloc = urlparse(hosted[0] if hosted else link).netloc
    return netloc or ("upload" if link.startswith(UPLOAD_PREFIX) else "local")


def _count_failure(link: str, exc: FetchError, settings: Settings, task: TaskFolder | None) -> None:
    """Count a failed read; log it once per cause and place (host and port, or the kind of link),
    so that a Label Studio that cannot be reached says so in the log without a line per image."""
    host = _place(link, settings, task)
    with _failures_lock:
        _failures[exc.cause] += 1
        first = (exc.cause, host) not in _logged
        _logged.add((exc.cause, host))
    if first:
        log.warning(
            "cannot read data (%s): %s; further failures of this kind are counted in /metrics "
            "(labelloop_fetch_failures_total) and shown per item, not logged",
            exc.cause,
            exc.message,
        )


def read_link(link: str, settings: Settings, task: TaskFolder | None = None) -> Content:
    """The bytes behind an image link, from wherever it lives, once they are known to be an image
    labelloop reads (format, declared size: see :func:`identify_image`). ``task`` is the folder
    of the item's task, where its uploads are (without it, no upload can be read) and where a
    remote image is kept once fetched."""
    try:
        if task is not None and _is_remote(link):
            return _read_stored(link, settings, task)
        return _read_image(link, settings, task)
    except FetchError as exc:
        _count_failure(link, exc, settings, task)
        raise


class LinkChecker:
    """Checks the links of new items before anything is stored (``POST /items``, imports, Label
    Studio tasks): a link that reading would refuse is refused here, with the same reason.

    Only what can be known without reading is checked; a file that is missing or a host that does
    not resolve is not refused here (the item fails when it is fetched, which checks again). Host
    lookups are made once per host per checker.
    """

    def __init__(self, settings: Settings, task: TaskFolder) -> None:
        self.settings = settings
        self.task = task
        self._hosts: dict[str, list[Address] | None] = {}

    def check(self, link: str) -> None:
        link = link.strip()
        if not link:
            raise FetchError("empty data link")
        _no_controls(link)
        if link.startswith(UPLOAD_PREFIX):
            if not _upload_target(link, self.task).is_file():
                raise FetchError(f"task has no upload {link[len(UPLOAD_PREFIX) :]!r}")
            return
        try:
            hosted = labelstudio_link(link, self.settings, self.task, exchange=False)
        except FetchError:
            return  # a relative Label Studio link while its URL is unknown: fails when read
        if hosted is not None:
            self._check_http(hosted[0])
            return
        scheme = urlparse(link).scheme.lower()
        if scheme in ("http", "https"):
            self._check_http(link)
        elif scheme in ("", "file"):
            _local_target(link, self.settings, None)
        else:
            raise FetchError(f"unsupported link scheme {scheme!r} in {link!r}")

    def _check_http(self, link: str) -> None:
        check_url(link, self.settings, need_address=False, resolve=self._resolve)

    def _resolve(self, host: str, port: int) -> list[Address] | None:
        if host not in self._hosts:
            self._hosts[host] = _addresses(host, port)
        return self._hosts[host]
