"""The one place where labelloop's errors are defined.

Every error a user can cause or meet is a :class:`LabelloopError`. Third-party errors (SQLAlchemy,
httpx, PIL, Celery) are translated into these at the boundary where they occur, so that the API maps
them to an HTTP status in one place (``labelloop.api.errors``) and the CLI to a message and an exit
code, and no traceback ever reaches a user.
"""

from __future__ import annotations


class LabelloopError(Exception):
    """Base class: a failure with a message that is safe to show to a user."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(LabelloopError):
    """The request is well-formed but its content is not acceptable (unknown label, bad policy)."""

    status_code = 422
    code = "invalid_input"


class NotFound(LabelloopError):
    """A task, item, version or job that does not exist (or was deleted)."""

    status_code = 404
    code = "not_found"


class Conflict(LabelloopError):
    """The request contradicts the current state (e.g. a name already taken)."""

    status_code = 409
    code = "conflict"


class NotSupported(LabelloopError):
    """Something labelloop does not handle yet (e.g. a Label Studio config other than choices)."""

    status_code = 422
    code = "not_supported"


class PayloadTooLarge(LabelloopError):
    """A request body or a fetched item is bigger than the configured limit."""

    status_code = 413
    code = "payload_too_large"


class Unauthorized(LabelloopError):
    """A call without the right token."""

    status_code = 401
    code = "unauthorized"


class FetchError(LabelloopError):
    """A data link that cannot be read, is too big, has the wrong type, or cannot be decoded."""

    status_code = 422
    code = "fetch_failed"


class ForbiddenPath(FetchError):
    """A local path outside the import roots the operator configured."""

    status_code = 403
    code = "forbidden_path"


class ForbiddenAddress(FetchError):
    """An http(s) link to a loopback, private, link-local or other non-public address."""

    status_code = 403
    code = "forbidden_address"


class NoModel(LabelloopError):
    """An operation that needs a served model on a task that has none yet."""

    status_code = 409
    code = "no_model"


class Unavailable(LabelloopError):
    """A dependency (broker, worker, database) is not answering; retrying later may work."""

    status_code = 503
    code = "unavailable"


class Timeout(LabelloopError):
    """No worker answered in time."""

    status_code = 504
    code = "timeout"


class ConfigError(LabelloopError):
    """Settings that cannot work (e.g. a default secret outside development)."""

    code = "config_error"
