"""What every ``labelloop`` command shares: the consoles, logging set-up and the error wrapper.

Its own module so that command groups living beside their subsystem (``labelloop.cluster.cli``)
use the same pieces as ``labelloop.cli`` without importing it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from labelloop.client import ClientError
from labelloop.errors import LabelloopError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

#: A labelloop or client error: a message on stderr and this exit code (as Typer's usage errors).
ERROR_EXIT = 2


def friendly(func: F) -> F:
    """Turn labelloop and client errors into a message and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (LabelloopError, ClientError) as exc:
            err_console.print(f"[red]error:[/] {getattr(exc, 'message', exc)}")
            raise typer.Exit(ERROR_EXIT) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(level: str) -> None:
    from labelloop.observability import quiet_libraries  # the store's models: not for --help

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_libraries(level)
