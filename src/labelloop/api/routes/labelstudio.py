"""Label Studio's ML-backend protocol under ``/labelstudio``; the logic is in
:mod:`labelloop.labelstudio.backend`. Connect a project with the URL ``http://HOST:PORT/labelstudio``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from labelloop.api.deps import RuntimeDep
from labelloop.api.errors import responses
from labelloop.labelstudio import backend
from labelloop.schemas import (
    Json,
    LabelStudioEvent,
    LabelStudioHealth,
    LabelStudioPredictions,
    LabelStudioSetup,
)

router = APIRouter(tags=["label studio"])
#: Label Studio's own JSON, read by :mod:`labelloop.labelstudio.backend`; checked for valid text.
Payload = Annotated[Json, Body()]
CALL = responses(400, 401, 404, 413, 422, 503)


@router.get("/", response_model=LabelStudioHealth, responses=responses(401))
@router.get("/health", response_model=LabelStudioHealth, responses=responses(401))
def health() -> dict[str, Any]:
    """Label Studio's health check."""
    return backend.health()


@router.post("/setup", response_model=LabelStudioSetup, responses=CALL)
def setup(body: Payload, rt: RuntimeDep) -> dict[str, Any]:
    """Connect a project: its config becomes a task; its URL and token are kept for media."""
    return backend.setup(rt, body)


@router.post(
    "/predict", response_model=LabelStudioPredictions, responses={**CALL, **responses(504)}
)
def predict(body: Payload, rt: RuntimeDep) -> dict[str, Any]:
    """Pre-labels for a batch of Label Studio tasks, in Label Studio's format."""
    return backend.predict(rt, body)


@router.post("/webhook", response_model=LabelStudioEvent, responses=CALL)
def webhook(body: Payload, rt: RuntimeDep) -> dict[str, Any]:
    """Annotation created, updated or deleted, and "start training": fed to the loop."""
    return backend.webhook(rt, body)


@router.post("/train", response_model=LabelStudioEvent, responses=CALL)
def train(body: Payload, rt: RuntimeDep) -> dict[str, Any]:
    """The older training call of Label Studio (all annotations at once)."""
    return backend.train(rt, body)
