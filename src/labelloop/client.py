"""A typed Python client for the labelloop HTTP API.

Every method maps to one endpoint and returns its JSON answer as a plain dict, typed by the
server's own answer shapes (the typed dicts of :mod:`labelloop.schemas`, which the server
declares as each route's ``response_model``). An error answer raises a subclass of
:class:`ApiError` chosen by the HTTP status (:class:`NotFoundError`, :class:`InvalidRequestError`,
:class:`ConflictError`, ...) with the server's code and message; a server that cannot be reached
raises :class:`ConnectionFailed`. The exceptions live in :mod:`labelloop.errors` (their tree is
drawn there) and are importable from here.

    with Client("http://127.0.0.1:8000") as ll:
        task = ll.create_task("digits", "image-classification", labels=[str(d) for d in range(10)])
        ll.add_items(task["id"], [{"data": "/data/img/0.png", "external_id": "0"}])
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from labelloop.errors import (
    ApiError,
    ClientError,
    ConflictError,
    ConnectionFailed,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    UnauthorizedError,
    api_error,
)
from labelloop.schemas import (
    AnnotationsSubmitted,
    AnnotatorTokenCreated,
    AnnotatorTokenPublic,
    CallerPublic,
    CsvImported,
    DataPredictions,
    FolderImported,
    FolderListing,
    Health,
    ItemPublic,
    ItemsAdded,
    ItemsPage,
    JobPublic,
    JsonlImported,
    LabelStudioEvent,
    LabelStudioHealth,
    LabelStudioPredictions,
    LabelStudioSetup,
    ModelVersionPublic,
    NextItems,
    PredictionPublic,
    Promoted,
    Released,
    Suspects,
    TaskMetrics,
    TaskProgress,
    TaskPublic,
    TrainRequested,
    UploadsAdded,
    WorkersStatus,
)

__all__ = [
    "AddedItems",
    "ApiError",
    "Client",
    "ClientError",
    "ConflictError",
    "ConnectionFailed",
    "ForbiddenError",
    "InvalidRequestError",
    "ModelVersionInfo",
    "NextItems",
    "NotFoundError",
    "PayloadTooLargeError",
    "Prediction",
    "ServerError",
    "Submitted",
    "Task",
    "UnauthorizedError",
    "api_error",
]

JSON = dict[str, Any]

# The answers' shapes are the server's own (labelloop.schemas); the short names are the client's.
Task = TaskPublic
Prediction = PredictionPublic
AddedItems = ItemsAdded
Submitted = AnnotationsSubmitted
ModelVersionInfo = ModelVersionPublic


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
            raise api_error(resp.status_code, str(code), str(detail))
        if resp.status_code == 204 or not resp.content:
            return None
        if not resp.headers.get("content-type", "").startswith("application/json"):
            return resp.content
        return resp.json()

    # -- health -----------------------------------------------------------------------------
    def health(self) -> Health:
        result: Health = self._request("GET", "/health")
        return result

    def wait_until_up(self, timeout: float = 30.0) -> Health:
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
    ) -> Task:
        """A new task (``policy``: the fields of :class:`labelloop.loop.policy.Policy` to set)."""
        body: JSON = {"name": name, "category": category, "extra": extra, "labels": list(labels)}
        if policy is not None:
            body["policy"] = policy
        result: Task = self._request("POST", "/api/v1/tasks", json=body)
        return result

    def list_tasks(self) -> list[Task]:
        result: list[Task] = self._request("GET", "/api/v1/tasks")
        return result

    def get_task(self, task_id: int) -> Task:
        result: Task = self._request("GET", f"/api/v1/tasks/{task_id}")
        return result

    def update_task(
        self,
        task_id: int,
        *,
        name: str | None = None,
        policy: JSON | None = None,
        archived: bool | None = None,
    ) -> Task:
        """Rename a task, change policy fields (those given replace the current ones), archive it
        (``archived=True``: kept, no longer handed out to label) or restore it."""
        body: JSON = {}
        if name is not None:
            body["name"] = name
        if policy is not None:
            body["policy"] = policy
        if archived is not None:
            body["archived"] = archived
        result: Task = self._request("PATCH", f"/api/v1/tasks/{task_id}", json=body)
        return result

    def delete_task(self, task_id: int) -> None:
        self._request("DELETE", f"/api/v1/tasks/{task_id}")

    def wait_for_training(self, task_id: int, timeout: float = 600.0, poll: float = 0.02) -> Task:
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
    def add_items(self, task_id: int, items: Sequence[JSON]) -> AddedItems:
        result: AddedItems = self._request(
            "POST", f"/api/v1/tasks/{task_id}/items", json={"items": list(items)}
        )
        return result

    def get_item(self, task_id: int, item_id: int) -> ItemPublic:
        result: ItemPublic = self._request("GET", f"/api/v1/tasks/{task_id}/items/{item_id}")
        return result

    def list_items(
        self,
        task_id: int,
        *,
        source: str | None = None,
        label: str | None = None,
        suspect: bool | None = None,
        annotator: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> ItemsPage:
        """A page of the task's items, by id; filters (label ``source`` human/model/none, ``label``,
        ``suspect``, ``annotator``, ``status``) combine."""
        params: JSON = {"offset": offset, "limit": limit}
        given = {"source": source, "label": label, "annotator": annotator, "status": status}
        params.update({k: v for k, v in given.items() if v is not None})
        if suspect is not None:
            params["suspect"] = "true" if suspect else "false"
        result: ItemsPage = self._request("GET", f"/api/v1/tasks/{task_id}/items", params=params)
        return result

    def annotate(self, task_id: int, annotations: Sequence[JSON]) -> Submitted:
        result: Submitted = self._request(
            "POST", f"/api/v1/tasks/{task_id}/annotations", json={"annotations": list(annotations)}
        )
        return result

    # -- predictions ------------------------------------------------------------------------
    def prediction(self, task_id: int, item_id: int) -> Prediction:
        result: Prediction = self._request(
            "GET", f"/api/v1/tasks/{task_id}/predictions", params={"item_id": item_id}
        )
        return result

    def predict(self, task_id: int, data: Sequence[str]) -> DataPredictions:
        result: DataPredictions = self._request(
            "POST", f"/api/v1/tasks/{task_id}/predict", json={"items": [{"data": d} for d in data]}
        )
        return result

    def next_items(self, task_id: int, limit: int = 10, annotator: str | None = None) -> NextItems:
        """The items to label next; with ``annotator`` (or an annotator's token) they are reserved
        for that person for a lease, and the ones they hold come first."""
        params: JSON = {"limit": limit}
        if annotator is not None:
            params["annotator"] = annotator
        result: NextItems = self._request("GET", f"/api/v1/tasks/{task_id}/next", params=params)
        return result

    def release_reservations(self, task_id: int, annotator: str | None = None) -> Released:
        """Give back the items reserved for ``annotator`` (an annotator's token: its own; the
        admin without a name: every reservation of the task)."""
        params = {"annotator": annotator} if annotator is not None else {}
        result: Released = self._request(
            "DELETE", f"/api/v1/tasks/{task_id}/reservations", params=params
        )
        return result

    def progress(self, task_id: int) -> TaskProgress:
        """Labelled, left, rate and time left, for the task and per annotator."""
        result: TaskProgress = self._request("GET", f"/api/v1/tasks/{task_id}/progress")
        return result

    # -- models, jobs, metrics --------------------------------------------------------------
    def models(self, task_id: int) -> list[ModelVersionInfo]:
        result: list[ModelVersionInfo] = self._request("GET", f"/api/v1/tasks/{task_id}/models")
        return result

    def promote(self, task_id: int, version: int) -> Promoted:
        result: Promoted = self._request(
            "POST", f"/api/v1/tasks/{task_id}/models/{version}/promote"
        )
        return result

    def train(self, task_id: int) -> TrainRequested:
        result: TrainRequested = self._request("POST", f"/api/v1/tasks/{task_id}/train")
        return result

    def jobs(self, task_id: int, limit: int = 50) -> list[JobPublic]:
        result: list[JobPublic] = self._request(
            "GET", f"/api/v1/tasks/{task_id}/jobs", params={"limit": limit}
        )
        return result

    def metrics(self, task_id: int) -> TaskMetrics:
        result: TaskMetrics = self._request("GET", f"/api/v1/tasks/{task_id}/metrics")
        return result

    def suspects(self, task_id: int, limit: int = 100) -> Suspects:
        """Human labels the model confidently disagrees with, and annotator agreement."""
        result: Suspects = self._request(
            "GET", f"/api/v1/tasks/{task_id}/suspects", params={"limit": limit}
        )
        return result

    # -- getting data in, content out -----------------------------------------------------
    def import_folders(self, path: str | None = None) -> FolderListing:
        """The server's import roots, or one folder below them with its sub-folders and images."""
        params = {"path": path} if path is not None else {}
        result: FolderListing = self._request("GET", "/api/v1/import/folders", params=params)
        return result

    def import_folder(
        self,
        task_id: int,
        path: str,
        recursive: bool = True,
        labels_from_folders: bool = False,
        add_labels: bool = False,
    ) -> FolderImported:
        """Add every image of a folder on the server (below an import root) as items; with
        ``labels_from_folders``, each sub-folder's name is its images' label."""
        result: FolderImported = self._request(
            "POST",
            f"/api/v1/tasks/{task_id}/import/folder",
            json={
                "path": path,
                "recursive": recursive,
                "labels_from_folders": labels_from_folders,
                "add_labels": add_labels,
            },
        )
        return result

    def import_csv(
        self,
        task_id: int,
        csv: bytes | str | Path,
        text_column: str | None = None,
        id_column: str | None = None,
        label_column: str | None = None,
        add_labels: bool = False,
    ) -> CsvImported:
        """Add the rows of a CSV (bytes, text, or a file path) as text items; ``label_column``
        names a column of labels, recorded as imported human labels."""
        raw = csv.read_bytes() if isinstance(csv, Path) else csv
        raw = raw.encode("utf-8") if isinstance(raw, str) else raw
        named = (
            ("text_column", text_column),
            ("id_column", id_column),
            ("label_column", label_column),
        )
        form = {k: v for k, v in named if v}
        if add_labels:
            form["add_labels"] = "true"
        result: CsvImported = self._request(
            "POST",
            f"/api/v1/tasks/{task_id}/import/csv",
            files={"file": ("texts.csv", raw, "text/csv")},
            data=form,
        )
        return result

    def import_jsonl(
        self,
        task_id: int,
        lines: bytes | str | Path | Iterable[Mapping[str, Any]],
        add_labels: bool = False,
    ) -> JsonlImported:
        """Add texts with their spans (or labels) from JSON lines (bytes, text, a file path, or
        the lines as dicts: ``{"text": …, "spans": [{"start", "end", "label"}]}``); the spans are
        recorded as imported human labels."""
        if isinstance(lines, Path):
            raw: bytes | str = lines.read_bytes()
        elif isinstance(lines, bytes | str):
            raw = lines
        else:
            raw = "".join(json.dumps(line) + "\n" for line in lines)
        raw = raw.encode("utf-8") if isinstance(raw, str) else raw
        result: JsonlImported = self._request(
            "POST",
            f"/api/v1/tasks/{task_id}/import/jsonl",
            files={"file": ("texts.jsonl", raw, "application/jsonl")},
            data={"add_labels": "true"} if add_labels else {},
        )
        return result

    def upload_images(
        self, task_id: int, files: Sequence[Path | tuple[str, bytes]]
    ) -> UploadsAdded:
        """Upload image files (paths, or (name, bytes) pairs); the server keeps and adds them."""
        parts = []
        for f in files:
            name, raw = (f.name, f.read_bytes()) if isinstance(f, Path) else f
            parts.append(("files", (name, raw, "application/octet-stream")))
        result: UploadsAdded = self._request(
            "POST", f"/api/v1/tasks/{task_id}/uploads", files=parts
        )
        return result

    def item_content(self, task_id: int, item_id: int) -> bytes:
        """The item's image bytes (or its text, UTF-8 encoded)."""
        result: bytes = self._request("GET", f"/api/v1/tasks/{task_id}/items/{item_id}/content")
        return result

    # -- annotators -----------------------------------------------------------------------
    def create_annotator_token(self, annotator: str) -> AnnotatorTokenCreated:
        """A token that labels as ``annotator`` and may not delete, promote, train or import
        (admin only; the answer is the only place the token shows)."""
        result: AnnotatorTokenCreated = self._request(
            "POST", "/api/v1/annotator-tokens", json={"annotator": annotator}
        )
        return result

    def annotator_tokens(self) -> list[AnnotatorTokenPublic]:
        result: list[AnnotatorTokenPublic] = self._request("GET", "/api/v1/annotator-tokens")
        return result

    def revoke_annotator_token(self, token_id: int) -> None:
        self._request("DELETE", f"/api/v1/annotator-tokens/{token_id}")

    def me(self) -> CallerPublic:
        """Who this client's token says it is: the admin, or which annotator."""
        result: CallerPublic = self._request("GET", "/api/v1/me")
        return result

    # -- operators ------------------------------------------------------------------------
    def prometheus_metrics(self) -> str:
        """The Prometheus exposition text served at ``/metrics``."""
        raw: bytes = self._request("GET", "/metrics")
        return raw.decode("utf-8")

    def cluster_workers(self) -> WorkersStatus:
        """Live workers of a cluster (``NotFoundError`` on a server without a cluster)."""
        result: WorkersStatus = self._request("GET", "/api/v1/cluster/workers")
        return result

    # -- Label Studio ML backend ----------------------------------------------------------
    def labelstudio_health(self) -> LabelStudioHealth:
        result: LabelStudioHealth = self._request("GET", "/labelstudio/health")
        return result

    def labelstudio_setup(self, body: JSON) -> LabelStudioSetup:
        """What Label Studio sends to connect a project (``project``, ``schema``, ...)."""
        result: LabelStudioSetup = self._request("POST", "/labelstudio/setup", json=body)
        return result

    def labelstudio_predict(self, body: JSON) -> LabelStudioPredictions:
        """Label Studio's predict call: ``tasks``, ``project``, ``label_config``."""
        result: LabelStudioPredictions = self._request("POST", "/labelstudio/predict", json=body)
        return result

    def labelstudio_webhook(self, body: JSON) -> LabelStudioEvent:
        """A Label Studio event (``action``, ``annotation``, ``task``, ``project``)."""
        result: LabelStudioEvent = self._request("POST", "/labelstudio/webhook", json=body)
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
                    raise api_error(
                        resp.status_code, body.get("error", "error"), body.get("detail", "")
                    )
                yield from resp.iter_lines()
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from None
