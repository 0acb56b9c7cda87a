"""The cluster's secrets and TLS, in one place.

- The cluster token comes from ``LABELLOOP_CLUSTER_TOKEN`` or from a file named by
  ``LABELLOOP_CLUSTER_TOKEN_FILE`` (mode 600, e.g. written by a secret store); in production a
  missing token is refused, in development the well-known default is used.
- Other secrets (the broker password, the database URL) may come from files too
  (:func:`read_secret_file`); none is ever put on a command line, into a log or an answer:
  :func:`redact_url` hides the password of a URL that is shown.
- Agent and coordinator RPC speak HTTPS when given a certificate and key; their clients verify
  the peer with the cluster's CA file (``LABELLOOP_CLUSTER_CA``) or the system's CAs.
"""

from __future__ import annotations

import hmac
import os
import ssl
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from labelloop.config import DEFAULT_CLUSTER_TOKEN, Settings
from labelloop.errors import ConfigError, Unauthorized

TOKEN_ENV = "LABELLOOP_CLUSTER_TOKEN"  # noqa: S105 - a variable's name
TOKEN_FILE_ENV = "LABELLOOP_CLUSTER_TOKEN_FILE"  # noqa: S105 - a variable's name
CA_ENV = "LABELLOOP_CLUSTER_CA"


def read_secret_file(path: Path, what: str) -> str:
    """A secret kept in a file (its first line); refused if others may read the file."""
    try:
        mode = path.stat().st_mode
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} holds {what}: make it readable by its owner only (chmod 600)")
    if not value:
        raise ConfigError(f"{path} is empty (it should hold {what})")
    return value


def cluster_token(settings: Settings) -> SecretStr:
    """The cluster token of the agent, the coordinator and ``labelloop cluster``."""
    if settings.cluster_token is not None:
        return settings.cluster_token
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        token = read_secret_file(Path(path), "the cluster token")
        if settings.environment != "development" and token == DEFAULT_CLUSTER_TOKEN:
            raise ConfigError(f"{path} holds the development default token; use a secret")
        return SecretStr(token)
    if settings.environment != "development":
        raise ConfigError(
            f"{TOKEN_ENV} is not set: give the cluster's secret in it or in a file named by "
            f"{TOKEN_FILE_ENV} (the same on every machine)"
        )
    return SecretStr(DEFAULT_CLUSTER_TOKEN)


def check_token(expected: SecretStr, header: str | None) -> None:
    """Refuse a call without ``Authorization: Bearer <cluster token>`` (constant-time compare)."""
    scheme, _, given = (header or "").partition(" ")
    ok = hmac.compare_digest(given.strip().encode(), expected.get_secret_value().encode())
    if scheme.lower() != "bearer" or not ok:
        raise Unauthorized("this call needs the cluster token")


def client_tls(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """How RPC clients verify an HTTPS peer: against ``ca_file`` (or ``LABELLOOP_CLUSTER_CA``),
    else the system's CAs. Plain-HTTP peers are unaffected."""
    ca = ca_file or os.environ.get(CA_ENV) or None
    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the cluster CA {ca}: {exc}") from None


def server_tls(cert: Path | None, key: Path | None) -> dict[str, str]:
    """uvicorn's TLS arguments for an RPC server: both files, or neither (plain HTTP)."""
    if (cert is None) != (key is None):
        raise ConfigError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    if cert is None or key is None:
        return {}
    for path in (cert, key):
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
    try:  # fail at start, with a message, rather than at the first connection
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use {cert} with {key}: {exc}") from None
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def redact_url(url: str | None) -> str | None:
    """``url`` with its password replaced by ``***`` (what may be shown of a secret URL)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def secrets_of_url(url: str | None) -> list[str]:
    """The secret parts of a URL (its password), for scrubbing log lines."""
    if not url:
        return []
    password = urlsplit(url).password
    return [password] if password else []
