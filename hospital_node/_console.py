"""Console helpers shared by the node CLI: progress bars and error exits (no ML here)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)
out = Console()


def medidd_home() -> Path:
    """The site's private MediDD folder (salt, caches): ``$MEDIDD_HOME`` or ``~/.medidd``."""
    return Path(os.environ.get("MEDIDD_HOME", Path.home() / ".medidd"))


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error and return the exit to raise."""
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Progress]:
    """A rich progress bar (hidden with ``--quiet``)."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    with bar:
        yield bar
