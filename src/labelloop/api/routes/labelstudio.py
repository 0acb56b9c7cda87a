"""Label Studio's ML-backend protocol under ``/labelstudio``; the logic is in
:mod:`labelloop.labelstudio.backend`. Connect a project with the URL ``http://HOST:PORT/labelstudio``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from labelloop.api.deps import runtime
from labelloop.labelstudio import backend
from labelloop.runtime import Runtime

router = APIRouter(tags=["label studio"])
Rt = Annotated[Runtime, Depends(runtime)]
Payload = Annotated[dict[str, Any], Body()]


@router.get("/")
@router.get("/health")
def health() -> dict[str, Any]:
    """Label Studio's health check."""
    return backend.health()


@router.post("/setup")
def setup(body: Payload, rt: Rt) -> dict[str, Any]:
    """Connect a project: its config becomes a task; its URL and token are kept for media."""
    return backend.setup(rt, body)


@router.post("/predict")
def predict(body: Payload, rt: Rt) -> dict[str, Any]:
    """Pre-labels for a batch of Label Studio tasks, in Label Studio's format."""
    return backend.predict(rt, body)


@router.post("/webhook")
def webhook(body: Payload, rt: Rt) -> dict[str, Any]:
    """Annotation created, updated or deleted, and "start training": fed to the loop."""
    return backend.webhook(rt, body)


@router.post("/train")
def train(body: Payload, rt: Rt) -> dict[str, Any]:
    """The older training call of Label Studio (all annotations at once)."""
    return backend.train(rt, body)
