"""Request dependencies: the runtime, and the API token when one is configured."""

from __future__ import annotations

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
