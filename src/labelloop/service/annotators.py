"""Annotator tokens: each names its annotator, may read and label, and nothing else.

``LABELLOOP_API_TOKEN`` stays the admin's token. The admin creates a token per annotator (API or
``labelloop annotators create``); the token is shown once and only its SHA-256 is stored (it is 32
random bytes, so a plain hash is as strong as a slow one). A request with an annotator's token
labels as that annotator, whatever its body says (:mod:`labelloop.api.deps`).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Any

from sqlalchemy import select

from labelloop.errors import NotFound
from labelloop.runtime import Runtime
from labelloop.store.models import AnnotatorToken, utcnow

#: Every annotator token starts so: it is told apart from the admin's token at a glance.
PREFIX = "llann_"
#: A token is checked against the store at most this often per process; a revoked token stops
#: working on every process within this time.
CACHE_S = 5.0

_cache: dict[str, tuple[str | None, float]] = {}
_cache_lock = threading.Lock()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _public(row: AnnotatorToken) -> dict[str, Any]:
    return {
        "id": row.id,
        "annotator": row.annotator,
        "created_at": row.created_at.isoformat(),
        "revoked_at": None if row.revoked_at is None else row.revoked_at.isoformat(),
        "active": row.revoked_at is None,
    }


def create(rt: Runtime, annotator: str) -> dict[str, Any]:
    """A new token for ``annotator``; the answer is the only place the token ever appears."""
    token = PREFIX + secrets.token_urlsafe(32)
    with rt.session() as s:
        row = AnnotatorToken(annotator=annotator, token_hash=_hash(token))
        s.add(row)
        s.flush()
        return {**_public(row), "token": token}


def list_tokens(rt: Runtime) -> list[dict[str, Any]]:
    with rt.session() as s:
        return [_public(r) for r in s.scalars(select(AnnotatorToken).order_by(AnnotatorToken.id))]


def revoke(rt: Runtime, token_id: int) -> dict[str, Any]:
    """Revoke a token (a second revoke changes nothing)."""
    with rt.session() as s:
        row = s.get(AnnotatorToken, token_id)
        if row is None:
            raise NotFound(f"no annotator token {token_id}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        digest = row.token_hash
        out = _public(row)
    with _cache_lock:
        _cache.pop(digest, None)
    return out


def annotator_of(rt: Runtime, token: str) -> str | None:
    """The annotator an active token names; None for any other string."""
    if not token.startswith(PREFIX):
        return None
    digest = _hash(token)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(digest)
    if hit is not None and hit[1] > now:
        return hit[0]
    with rt.session() as s:
        name = s.scalar(
            select(AnnotatorToken.annotator).where(
                AnnotatorToken.token_hash == digest, AnnotatorToken.revoked_at.is_(None)
            )
        )
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest] = (name, now + CACHE_S)
    return name
