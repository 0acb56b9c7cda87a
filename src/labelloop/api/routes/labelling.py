from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from labelloop.api.deps import runtime
from labelloop.runtime import Runtime
from labelloop.service import labelling

router = APIRouter(tags=["annotations"])
Rt = Annotated[Runtime, Depends(runtime)]


class AnnotationsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotations: list[labelling.AnnotationIn]


@router.post("/tasks/{task_id}/annotations", status_code=201)
def submit(task_id: int, body: AnnotationsIn, rt: Rt) -> dict[str, Any]:
    """Append labels (all or none). Each records the pre-label shown, so edit rates are measured."""
    return labelling.submit(rt, task_id, body.annotations)
