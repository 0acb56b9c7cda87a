"""``labelloop annotators``: the admin's annotator tokens, on the store directly (whoever can reach
the store is the admin). The same operations as ``/api/v1/annotator-tokens``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pydantic
import typer

from labelloop.cliutil import console, friendly
from labelloop.config import Settings, load_settings
from labelloop.errors import InvalidInput

if TYPE_CHECKING:
    from labelloop.runtime import Runtime

annotators_app = typer.Typer(
    help="Annotator tokens: each labels as its annotator and may not delete, promote, train or "
    "import.",
    no_args_is_help=True,
)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        metavar="FOLDER",
        envvar="LABELLOOP_DATA_DIR",
        help="Datastore root (the store is LABELLOOP_DATABASE_URL, or the SQLite file in it).",
        show_default=str(Settings.model_fields["data_dir"].default),
    ),
]


def _runtime(data_dir: Path | None) -> Runtime:
    from labelloop.runtime import Runtime  # the store only when a command runs, not for --help

    settings = load_settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    return Runtime(settings, migrate_schema=True)


@annotators_app.command("create")
@friendly
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The annotator the token names.")],
    data_dir: DataDir = None,
) -> None:
    """Create a token for NAME and print it (this once: only its hash is kept)."""
    from labelloop.schemas import AnnotatorTokenCreate, explain
    from labelloop.service import annotators

    try:
        body = AnnotatorTokenCreate(annotator=name)
    except pydantic.ValidationError as exc:
        raise InvalidInput(explain(exc.errors())) from None
    rt = _runtime(data_dir)
    try:
        made = annotators.create(rt, body.annotator)
    finally:
        rt.close()
    console.print(f"token {made['id']} for {made['annotator']} (shown once; keep it secret):")
    print(made["token"])


@annotators_app.command("list")
@friendly
def list_tokens(data_dir: DataDir = None) -> None:
    """List the tokens: id, annotator, created, revoked (never the tokens themselves)."""
    from rich.table import Table

    from labelloop.service import annotators

    rt = _runtime(data_dir)
    try:
        rows = annotators.list_tokens(rt)
    finally:
        rt.close()
    table = Table()
    for col in ("id", "annotator", "created", "revoked"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), r["annotator"], r["created_at"], r["revoked_at"] or "-")
    console.print(table)


@annotators_app.command("revoke")
@friendly
def revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (see list).")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a token: it stops working within seconds."""
    from labelloop.service import annotators

    rt = _runtime(data_dir)
    try:
        gone = annotators.revoke(rt, token_id)
    finally:
        rt.close()
    console.print(f"token {gone['id']} of {gone['annotator']} is revoked")
