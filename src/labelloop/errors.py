"""The one place where labelloop's exceptions are defined, grouped by what caused them.

Server side, every failure a user can cause or meet is a :class:`LabelloopError`: its message is
safe to show, and its class carries the HTTP status the API answers with (``labelloop.api.errors``
maps them in one place; the CLI prints the message and exits non-zero). Third-party errors
(SQLAlchemy, httpx, PIL, Celery, pydantic) are translated into these where they occur, so no
traceback and no Python repr ever reaches a user. The HTTP client (:mod:`labelloop.client`) raises
the :class:`ClientError` branch; its names differ from the server's, so one ``import`` can hold
both.

    LabelloopError ············ 500  a failure whose message is safe to show
    ├── RequestError                 the request cannot be done as sent: change it, then retry
    │   ├── InvalidInput ······ 422  content not acceptable (unknown label, bad policy, bad id)
    │   ├── NotSupported ······ 422  something labelloop does not handle yet
    │   ├── PayloadTooLarge ··· 413  a body or a fetched item over the configured limit
    │   ├── Unauthorized ······ 401  no token, or the wrong one
    │   └── Forbidden ········· 403  an annotator's token asking for what only the admin may do
    ├── StateError                   the request is sound, but the stored state refuses it
    │   ├── NotFound ·········· 404  no such task, item, version or job
    │   ├── Conflict ·········· 409  contradicts the current state
    │   └── NoModel ··········· 409  needs a served model; the task has none yet
    ├── FetchError ············ 422  a data link cannot be read, is too big or cannot be decoded
    │   ├── ForbiddenPath ····· 403  a local path outside the import roots
    │   └── ForbiddenAddress ·· 403  an http(s) link to a non-public address
    ├── ServiceError                 a dependency is not answering: retrying later may work
    │   ├── Unavailable ······· 503  broker, workers or database away
    │   └── Timeout ··········· 504  no worker answered in time
    └── ConfigError ··········· 500  settings that cannot work (stops a process at start)

    ClientError                      what the HTTP client meets
    ├── ConnectionFailed             the server cannot be reached or did not answer in time
    └── ApiError                     the server answered an error (``status``, ``code``, ``detail``)
        ├── InvalidRequestError      400, 422
        ├── UnauthorizedError        401
        ├── ForbiddenError           403
        ├── NotFoundError            404 (also an endpoint this server does not have)
        ├── ConflictError            409
        ├── PayloadTooLargeError     413
        └── ServerError              5xx
"""

from __future__ import annotations


class LabelloopError(Exception):
    """Base class: a failure with a message that is safe to show to a user."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str] | None:
        """HTTP headers the answer must carry (a 401's challenge)."""
        return None


# -- the request ------------------------------------------------------------------------------


class RequestError(LabelloopError):
    """The request cannot be done as sent; a changed request can succeed."""

    status_code = 400
    code = "bad_request"


class InvalidInput(RequestError):
    """The request is well-formed but its content is not acceptable (unknown label, bad policy)."""

    status_code = 422
    code = "invalid_input"


class NotSupported(RequestError):
    """Something labelloop does not handle yet (e.g. a Label Studio config other than choices)."""

    status_code = 422
    code = "not_supported"


class PayloadTooLarge(RequestError):
    """A request body or a fetched item is bigger than the configured limit."""

    status_code = 413
    code = "payload_too_large"


class Unauthorized(RequestError):
    """A call without the right token; ``schemes`` are the ways a client may present it."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, schemes: tuple[str, ...] = ("Bearer",)) -> None:
        super().__init__(message)
        self.schemes = schemes

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": ", ".join(f'{s} realm="labelloop"' for s in self.schemes)}


class Forbidden(RequestError):
    """A valid token that may not do this: an annotator's token may read and label, nothing else."""

    status_code = 403
    code = "forbidden"


# -- the stored state -------------------------------------------------------------------------


class StateError(LabelloopError):
    """The request is sound, but what is stored does not allow it (now)."""

    status_code = 409
    code = "conflict"


class NotFound(StateError):
    """A task, item, version or job that does not exist (or was deleted)."""

    status_code = 404
    code = "not_found"


class Conflict(StateError):
    """The request contradicts the current state (e.g. a version that is not ready)."""

    status_code = 409
    code = "conflict"


class NoModel(StateError):
    """An operation that needs a served model on a task that has none yet."""

    status_code = 409
    code = "no_model"


# -- the data an item links to ----------------------------------------------------------------


class FetchError(LabelloopError):
    """A data link that cannot be read, is too big, has the wrong type, or cannot be decoded.

    ``cause`` is a short, stable word for the kind of failure (``unreachable``, ``http_401``…):
    failures are logged once per cause and counted by it in ``/metrics``."""

    status_code = 422
    code = "fetch_failed"

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause or self.code


class ForbiddenPath(FetchError):
    """A local path outside the import roots the operator configured."""

    status_code = 403
    code = "forbidden_path"


class ForbiddenAddress(FetchError):
    """An http(s) link to a loopback, private, link-local or other non-public address."""

    status_code = 403
    code = "forbidden_address"


# -- the services labelloop depends on --------------------------------------------------------


class ServiceError(LabelloopError):
    """A dependency (broker, worker, database) is not answering; retrying later may work."""

    status_code = 503
    code = "unavailable"


class Unavailable(ServiceError):
    """The broker, the workers or the database is away."""

    status_code = 503
    code = "unavailable"


class Timeout(ServiceError):
    """No worker answered in time."""

    status_code = 504
    code = "timeout"


# -- the settings -----------------------------------------------------------------------------


class ConfigError(LabelloopError):
    """Settings that cannot work (e.g. an empty API token, a default secret outside development)."""

    code = "config_error"


# -- the HTTP client --------------------------------------------------------------------------


class ClientError(Exception):
    """Base class of the HTTP client's errors."""


class ConnectionFailed(ClientError):
    """The server could not be reached (or did not answer in time)."""


class ApiError(ClientError):
    """The server answered with an error status; subclasses name the common ones."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class InvalidRequestError(ApiError):
    """400/422: the request's content is not acceptable (the detail says why)."""


class UnauthorizedError(ApiError):
    """401: no API token, or the wrong one."""


class ForbiddenError(ApiError):
    """403: a path outside the server's import roots, or an annotator's token asking for what
    only the admin may do."""


class NotFoundError(ApiError):
    """404: no such task, item or version; or an endpoint this server does not have."""


class ConflictError(ApiError):
    """409: the request contradicts the current state (e.g. no model yet)."""


class PayloadTooLargeError(ApiError):
    """413: the body (or a fetched item) is over the server's limit."""


class ServerError(ApiError):
    """5xx: the server failed, or a dependency (database, workers) is unavailable."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
}


def api_error(status: int, code: str, detail: str) -> ApiError:
    """The client exception class that fits an error answer."""
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, code, detail)
