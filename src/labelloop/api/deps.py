"""Request dependencies: the runtime, and the API token when one is configured."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request

from labelloop.errors import Unauthorized
from labelloop.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


def require_token(request: Request) -> None:
    rt: Runtime = request.app.state.rt
    token = rt.settings.api_token
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(
        value.encode(), token.get_secret_value().encode()
    ):
        raise Unauthorized("missing or wrong API token")


def require_backend_token(request: Request) -> None:
    """Like :func:`require_token`, but also HTTP basic auth with the token as password.

    Label Studio can only send basic auth to an ML backend, so that is how it presents the token.
    """
    rt: Runtime = request.app.state.rt
    token = rt.settings.api_token
    if token is None:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            password = ""
        if hmac.compare_digest(password.encode(), token.get_secret_value().encode()):
            return
        raise Unauthorized("missing or wrong API token")
    require_token(request)
