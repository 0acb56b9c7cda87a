"""Request dependencies: the runtime, who calls (the token), and path parameters.

A route takes ``rt: RuntimeDep`` and ids typed ``TaskId`` / ``ItemId`` / ``VersionNo``: an id the
store cannot hold is answered 422 before any query runs. ``require_token`` (on every ``/api/v1``
route) tells the admin's token from an annotator's and holds an annotator to
:func:`annotator_may`, the one rule of what such a token may do; a route that acts for the caller
takes ``caller: CallerDep``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from labelloop.errors import Forbidden, Unauthorized
from labelloop.observability import route_template
from labelloop.runtime import Runtime
from labelloop.schemas import MAX_ID
from labelloop.service import annotators


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


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the admin (the API token, or anyone on a server without one), or an
    annotator, by their own token (:mod:`labelloop.service.annotators`)."""

    #: The annotator a token names; None for the admin.
    annotator: str | None = None

    @property
    def admin(self) -> bool:
        return self.annotator is None


ADMIN = Caller()
#: What an annotator's token may do besides reading: label, and give back the items it holds.
LABELLING = frozenset(
    {
        ("POST", "/api/v1/tasks/{task_id}/annotations"),
        ("DELETE", "/api/v1/tasks/{task_id}/reservations"),
    }
)
#: Paths only the admin may even read.
ADMIN_ONLY = ("/api/v1/annotator-tokens",)


def annotator_may(method: str, path: str) -> bool:
    """Whether an annotator's token may call ``method path`` (``path`` as the route declares it):
    read (tokens aside) and label; never delete, promote, train, import or change a task."""
    if path.startswith(ADMIN_ONLY):
        return False
    return method in ("GET", "HEAD") or (method, path) in LABELLING


def require_token(request: Request) -> None:
    """Who calls (``request.state.caller``): the admin's token, an annotator's token (limited to
    what :func:`annotator_may` allows: 403 otherwise), or, with no API token set, anyone."""
    rt: Runtime = request.app.state.rt
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    bearer = value if scheme.lower() in ("bearer", "token") else ""
    caller: Caller | None = None
    if bearer and rt.settings.api_token is not None and _token_matches(bearer, rt):
        caller = ADMIN
    elif bearer:
        name = annotators.annotator_of(rt, bearer)
        caller = None if name is None else Caller(name)
    if caller is None:
        if rt.settings.api_token is not None:
            raise Unauthorized("missing or wrong API token")
        caller = ADMIN  # a server without a token is open to everyone
    route = getattr(request.scope.get("route"), "path", None)
    path = (
        route_template(request.url.path, route, request.path_params)
        if isinstance(route, str)
        else request.url.path
    )
    if not caller.admin and not annotator_may(request.method, path):
        raise Forbidden(
            f"the token of annotator {caller.annotator!r} may read and label, not this: "
            "use the admin's token (LABELLOOP_API_TOKEN)"
        )
    request.state.caller = caller


def caller(request: Request) -> Caller:
    found: Caller = getattr(request.state, "caller", ADMIN)
    return found


#: Who sent the request (after :func:`require_token` checked the token).
CallerDep = Annotated[Caller, Depends(caller)]


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
