"""HTTP clients for the agent RPC and the coordinator, shared by the coordinator, agents and the CLI.

Every call but the health checks carries the cluster token. Failures become
:mod:`labelloop.errors` classes (a machine that does not answer is :class:`Unavailable`, one that
is too slow :class:`Timeout`), so callers decide "bad machine" in one way, and the CLI's
``@friendly`` prints them. Messages name the URL and the call, never the token or a cookie.
"""

from __future__ import annotations

import ssl
from typing import Any, Self

import httpx
from pydantic import SecretStr, ValidationError

from labelloop import errors
from labelloop.cluster.protocol import (
    RPC_PREFIX,
    AgentStatus,
    CookieAnswer,
    InitialAnswer,
    InitialRequest,
    RabbitStatus,
    Registration,
    Role,
    bearer,
)
from labelloop.cluster.security import client_tls

#: Error classes by the ``error`` code of an answer (labelloop's API answers ``{error, detail}``).
_BY_CODE: dict[str, type[errors.LabelloopError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.NotFound,
        errors.Conflict,
        errors.NotSupported,
        errors.Unauthorized,
        errors.Unavailable,
        errors.Timeout,
        errors.ConfigError,
    )
}


def _token(token: SecretStr | str) -> str:
    return token.get_secret_value() if isinstance(token, SecretStr) else token


class RpcClient:
    """A JSON-over-HTTP client with the cluster token; one per remote (agent or coordinator)."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr | str,
        timeout: float = 10.0,
        what: str = "server",
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.what = what
        secret = _token(token)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=bearer(secret) if secret else {},
            timeout=timeout,
            verify=verify if verify is not None else client_tls(),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> Any:
        """One call; its JSON answer, or a labelloop error that says which remote failed."""
        where = f"{self.what} {self.base_url}{path}"
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise errors.Timeout(f"{where}: no answer in time") from None
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise errors.Unavailable(
                    f"{where}: its TLS certificate is not trusted (give the cluster's CA file: "
                    "LABELLOOP_CLUSTER_CA or --tls-ca)"
                ) from None
            raise errors.Unavailable(f"{where}: not reachable ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise errors.Unavailable(f"{where}: not reachable ({type(exc).__name__})") from None
        if resp.status_code >= 400:
            raise _error(where, resp)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise errors.Unavailable(f"{where}: the answer is not JSON") from None


def _error(where: str, resp: httpx.Response) -> errors.LabelloopError:
    """The labelloop error for an error answer, keeping the remote's own message."""
    try:
        body = resp.json()
        code, detail = str(body.get("error", "")), str(body.get("detail", ""))
    except (ValueError, AttributeError):
        code, detail = "", resp.text[:200]
    if resp.status_code == 401:
        return errors.Unauthorized(f"{where}: the cluster token was refused")
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = errors.Unavailable if resp.status_code >= 500 else errors.InvalidInput
        if resp.status_code == 404:
            cls = errors.NotFound
    return cls(f"{where}: {detail or f'HTTP {resp.status_code}'}")


def _parse(model: type[Any], value: Any, where: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise errors.Unavailable(
            f"{where}: unexpected answer ({exc.error_count()} errors)"
        ) from None


class AgentClient(RpcClient):
    """The agent RPC at ``http://IP:PORT/rpc``."""

    #: ``initial`` starts RabbitMQ, joins the cluster and starts workers: minutes, not seconds.
    INITIAL_TIMEOUT_S = 300.0
    CONNECT_TIMEOUT_S = 5.0

    def __init__(
        self,
        base_url: str,
        token: SecretStr | str,
        timeout: float = 10.0,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        url = base_url.rstrip("/")
        if not url.endswith(RPC_PREFIX):
            url += RPC_PREFIX
        super().__init__(url, token, timeout, what="agent", verify=verify)

    @classmethod
    def of(
        cls,
        machine: Registration,
        token: SecretStr | str,
        timeout: float = 10.0,
        verify: ssl.SSLContext | None = None,
    ) -> AgentClient:
        return cls(machine.rpc_url, token, timeout, verify)

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/health", timeout=timeout)
        return result

    def info(self) -> Registration:
        result: Registration = _parse(Registration, self.call("POST", "/info"), self.base_url)
        return result

    def cookie(self) -> SecretStr:
        """The machine's Erlang cookie: keep it in a ``SecretStr``, never log it."""
        answer: CookieAnswer = _parse(CookieAnswer, self.call("POST", "/cookie"), self.base_url)
        return answer.cookie

    def initial(self, request: InitialRequest, timeout: float | None = None) -> InitialAnswer:
        # A machine that is down fails at connect time; one that answers may take minutes.
        wait = httpx.Timeout(timeout or self.INITIAL_TIMEOUT_S, connect=self.CONNECT_TIMEOUT_S)
        raw = self.call("POST", "/initial", request.wire(), timeout=wait)
        answer: InitialAnswer = _parse(InitialAnswer, raw, self.base_url)
        return answer

    def status(self, timeout: float | None = None, *, rabbit: bool = True) -> AgentStatus:
        """The agent's status; ``rabbit=False``: without its node's members (no rabbitmqctl)."""
        raw = self.call("POST", "/status" if rabbit else "/status?rabbit=false", timeout=timeout)
        result: AgentStatus = _parse(AgentStatus, raw, self.base_url)
        return result

    def stop(self, timeout: float | None = 120.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/stop", timeout=timeout) or {}
        return result

    def rabbit(self, timeout: float | None = 60.0) -> RabbitStatus:
        raw = self.call("POST", "/rabbit", timeout=timeout)
        result: RabbitStatus = _parse(RabbitStatus, raw, self.base_url)
        return result

    def leave(self, timeout: float | None = 300.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/leave", timeout=timeout) or {}
        return result

    def forget(self, node: str, timeout: float | None = 120.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/forget", {"node": node}, timeout=timeout)
        return result


class CoordinatorClient(RpcClient):
    """The coordinator's HTTP API (registration, roles, ``initial`` for all, status)."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr | str,
        timeout: float = 30.0,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, what="coordinator", verify=verify)

    def health(self) -> dict[str, Any]:
        """The cluster's verdict (an :class:`~labelloop.errors.Unavailable` when it is down)."""
        result: dict[str, Any] = self.call("GET", "/health")
        return result

    def live(self) -> dict[str, Any]:
        """Whether the coordinator itself answers (it asks no agent)."""
        result: dict[str, Any] = self.call("GET", "/livez")
        return result

    def register(self, machine: Registration) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/register", machine.model_dump(mode="json"))
        return result

    def machines(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/machines")
        return result

    def init(self, body: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        """``POST /init``: roles, then ``initial`` on every machine (waits for all answers)."""
        result: dict[str, Any] = self.call("POST", "/init", body, timeout=timeout)
        return result

    def join(self, ip: str, role: Role = "inference", timeout: float = 600.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "POST", "/join", {"ip": ip, "type": role}, timeout=timeout
        )
        return result

    def status(self, timeout: float = 60.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/status", timeout=timeout)
        return result

    def down(self, timeout: float = 600.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/down", timeout=timeout)
        return result

    def leave(self, ip: str, timeout: float = 900.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/leave", {"ip": ip}, timeout=timeout)
        return result

    def rabbit(self, timeout: float = 300.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/rabbit", timeout=timeout)
        return result

    def workers(self, timeout: float = 120.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/workers", timeout=timeout)
        return result
