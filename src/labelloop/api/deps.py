"""Request dependencies: the runtime, the API token when one is configured, and path parameters.

A route takes ``rt: RuntimeDep`` and ids typed ``TaskId`` / ``ItemId`` / ``VersionNo``: an id the
store cannot hold is answered 422 before any query runs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from labelloop.errors import Unauthorized
from labelloop.runtime import Runtime
from labelloop.schemas import MAX_ID


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


#: The runtime the app serves (settings, store, jobs): every route's first dependency.
RuntimeDep = Annotated[Runtime, Depends(runtime)]

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="the task's id")]
ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="the item's id")]
VersionNo = Annotated[int, Path(ge=0, le=MAX_ID, description="the model version (0 is the first)")]
ItemIdQuery = Annotated[int, Query(ge=1, le=MAX_ID, description="the item's id")]


def _token_matches(given: str, rt: Runtime) -> bool:
    token = rt.settings.api_token
    assert token is not None
    return hmac.compare_digest(given.encode(), token.get_secret_value().encode())


def require_token(request: Request) -> None:
    rt: Runtime = request.app.state.rt
    if rt.settings.api_token is None:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() not in ("bearer", "token") or not _token_matches(value, rt):
        raise Unauthorized("missing or wrong API token")


def require_backend_token(request: Request) -> None:
    """Like :func:`require_token`, but also HTTP basic auth with the token as password.

    Label Studio can only send basic auth to an ML backend, so that is how it presents the token.
    """
    rt: Runtime = request.app.state.rt
    if rt.settings.api_token is None:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            password = ""
        if _token_matches(password, rt):
            return
    elif scheme.lower() in ("bearer", "token") and _token_matches(value, rt):
        return
    raise Unauthorized("missing or wrong API token", schemes=("Basic", "Bearer"))
