"""A typed Python client for the labelloop HTTP API.

Every method maps to one endpoint and returns its JSON answer; an error answer raises
:class:`ApiError` (with the HTTP status and the server's message), and a server that cannot be
reached raises :class:`ConnectionFailed`.

    with Client("http://127.0.0.1:8000") as ll:
        task = ll.create_task("digits", "image-classification", labels=[str(d) for d in range(10)])
        ll.add_items(task["id"], [{"data": "/data/img/0.png", "external_id": "0"}])
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

JSON = dict[str, Any]


class ClientError(Exception):
    """Base class of the client's errors."""


class ConnectionFailed(ClientError):
    """The server could not be reached (or did not answer in time)."""


class ApiError(ClientError):
    """The server answered with an error status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ConnectionFailed(f"{method} {path}: no answer in time") from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                code, detail = body.get("error", "error"), body.get("detail", resp.text)
            except ValueError:
                code, detail = "error", resp.text
            raise ApiError(resp.status_code, str(code), str(detail))
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    # -- health -----------------------------------------------------------------------------
    def health(self) -> JSON:
        result: JSON = self._request("GET", "/health")
        return result

    def wait_until_up(self, timeout: float = 30.0) -> JSON:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except ClientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # -- tasks ------------------------------------------------------------------------------
    def create_task(
        self,
        name: str,
        category: str,
        labels: Sequence[str],
        extra: str = "multi-class",
        policy: JSON | None = None,
    ) -> JSON:
        body: JSON = {"name": name, "category": category, "extra": extra, "labels": list(labels)}
        if policy is not None:
            body["policy"] = policy
        result: JSON = self._request("POST", "/api/v1/tasks", json=body)
        return result

    def list_tasks(self) -> list[JSON]:
        result: list[JSON] = self._request("GET", "/api/v1/tasks")
        return result

    def get_task(self, task_id: int) -> JSON:
        result: JSON = self._request("GET", f"/api/v1/tasks/{task_id}")
        return result

    def delete_task(self, task_id: int) -> None:
        self._request("DELETE", f"/api/v1/tasks/{task_id}")

    def wait_for_training(self, task_id: int, timeout: float = 600.0, poll: float = 0.02) -> JSON:
        """Block until no training job of the task is queued or running; returns the task."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.get_task(task_id)
            if not task["training"]:
                return task
            if time.monotonic() > deadline:
                raise ConnectionFailed(f"task {task_id} still training after {timeout} s")
            time.sleep(poll)

    # -- items and labels -------------------------------------------------------------------
    def add_items(self, task_id: int, items: Sequence[JSON]) -> JSON:
        result: JSON = self._request(
            "POST", f"/api/v1/tasks/{task_id}/items", json={"items": list(items)}
        )
        return result

    def get_item(self, task_id: int, item_id: int) -> JSON:
        result: JSON = self._request("GET", f"/api/v1/tasks/{task_id}/items/{item_id}")
        return result

    def annotate(self, task_id: int, annotations: Sequence[JSON]) -> JSON:
        result: JSON = self._request(
            "POST", f"/api/v1/tasks/{task_id}/annotations", json={"annotations": list(annotations)}
        )
        return result

    # -- predictions ------------------------------------------------------------------------
    def prediction(self, task_id: int, item_id: int) -> JSON:
        result: JSON = self._request(
            "GET", f"/api/v1/tasks/{task_id}/predictions", params={"item_id": item_id}
        )
        return result

    def predict(self, task_id: int, data: Sequence[str]) -> JSON:
        result: JSON = self._request(
            "POST", f"/api/v1/tasks/{task_id}/predict", json={"items": [{"data": d} for d in data]}
        )
        return result

    def next_items(self, task_id: int, limit: int = 10) -> JSON:
        result: JSON = self._request(
            "GET", f"/api/v1/tasks/{task_id}/next", params={"limit": limit}
        )
        return result

    # -- models, jobs, metrics --------------------------------------------------------------
    def models(self, task_id: int) -> list[JSON]:
        result: list[JSON] = self._request("GET", f"/api/v1/tasks/{task_id}/models")
        return result

    def promote(self, task_id: int, version: int) -> JSON:
        result: JSON = self._request("POST", f"/api/v1/tasks/{task_id}/models/{version}/promote")
        return result

    def train(self, task_id: int) -> JSON:
        result: JSON = self._request("POST", f"/api/v1/tasks/{task_id}/train")
        return result

    def jobs(self, task_id: int, limit: int = 50) -> list[JSON]:
        result: list[JSON] = self._request(
            "GET", f"/api/v1/tasks/{task_id}/jobs", params={"limit": limit}
        )
        return result

    def metrics(self, task_id: int) -> JSON:
        result: JSON = self._request("GET", f"/api/v1/tasks/{task_id}/metrics")
        return result

    def suspects(self, task_id: int, limit: int = 100) -> JSON:
        result: JSON = self._request(
            "GET", f"/api/v1/tasks/{task_id}/suspects", params={"limit": limit}
        )
        return result

    def export(self, task_id: int, fmt: str = "jsonl") -> Iterator[str]:
        """The task's labelled data set, line by line, as the server streams it."""
        try:
            with self._http.stream(
                "GET", f"/api/v1/tasks/{task_id}/export", params={"format": fmt}
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    body = resp.json()
                    raise ApiError(
                        resp.status_code, body.get("error", "error"), body.get("detail", "")
                    )
                yield from resp.iter_lines()
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from None
