"""Annotator tokens (the admin's) and who a token says the caller is."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from labelloop.api.deps import CallerDep, RuntimeDep
from labelloop.api.errors import responses
from labelloop.schemas import (
    MAX_ID,
    AnnotatorTokenCreate,
    AnnotatorTokenCreated,
    AnnotatorTokenPublic,
    CallerPublic,
)
from labelloop.service import annotators

router = APIRouter(tags=["annotators"])
TokenId = Annotated[int, Path(ge=1, le=MAX_ID, description="the token's id")]


@router.post(
    "/annotator-tokens",
    status_code=201,
    response_model=AnnotatorTokenCreated,
    responses=responses(400, 401, 413, 422, 503),
)
def create_token(body: AnnotatorTokenCreate, rt: RuntimeDep) -> dict[str, Any]:
    """A token for one annotator: it may read and label (as that annotator), not delete, promote,
    train, import or change a task. The answer is the only place the token ever shows."""
    return annotators.create(rt, body.annotator)


@router.get(
    "/annotator-tokens",
    response_model=list[AnnotatorTokenPublic],
    responses=responses(401, 503),
)
def list_tokens(rt: RuntimeDep) -> list[dict[str, Any]]:
    """Every annotator token (never the token itself), oldest first."""
    return annotators.list_tokens(rt)


@router.delete(
    "/annotator-tokens/{token_id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 404, 422, 503),
)
def revoke_token(token_id: TokenId, rt: RuntimeDep) -> Response:
    """Revoke a token: it stops working within seconds on every server process."""
    annotators.revoke(rt, token_id)
    return Response(status_code=204)


@router.get("/me", response_model=CallerPublic, responses=responses(401, 503))
def me(rt: RuntimeDep, caller: CallerDep) -> CallerPublic:
    """Who the request's token says the caller is: the admin, or which annotator."""
    return {
        "role": "admin" if caller.admin else "annotator",
        "annotator": caller.annotator,
        "token_required": rt.settings.api_token is not None,
    }
