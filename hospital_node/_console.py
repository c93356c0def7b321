"""Console helpers shared by the node CLI: progress bars, error exits and the map from node
config keys (named in library messages) to this CLI's options (no ML here)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import click
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

#: Width of output that is not a terminal (a pipe, a log file): wide enough that tables keep
#: their natural width instead of wrapping at rich's default of 80 columns.
PIPE_WIDTH = 200

console = Console(stderr=True, soft_wrap=True,
                  width=None if sys.stderr.isatty() else PIPE_WIDTH // 2)
out = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)


def markup_mode() -> Literal["rich"] | None:
    """Typer's help and error style: rich panels in a terminal; plain click text (no boxes, no
    escape codes, no mid-sentence wrapping) when the output is a pipe or a file."""
    return "rich" if sys.stdout.isatty() and sys.stderr.isatty() else None


def medidd_home() -> Path:
    """The site's private MediDD folder (salt, caches): ``$MEDIDD_HOME`` or ``~/.medidd``."""
    return Path(os.environ.get("MEDIDD_HOME", Path.home() / ".medidd"))


#: Node config keys (as :func:`medidd.federation.node.node_key` names them) -> the options of
#: ``medidd-node serve`` that set them.
NODE_FLAGS: dict[str, str] = {
    "package": "--package",
    "patients": "--patients",
    "holdout": "--holdout",
    "name": "--name",
    "salt-file": "--salt-file",
    "cache-dir": "--cache",
    "region": "--region",
    "prior-dir": "--prior-dir",
    "report-dir": "--report-dir",
    "override-audit": "medidd-node serve --override-audit-by WHO --override-audit-reason WHY",
}


#: Ingestion option names as :mod:`medidd.io` messages quote them -> this CLI's options.
INGEST_FLAGS: dict[str, str] = {
    "pass allow_2d": "pass --allow-2d",
}


def cli_flags(message: str) -> str:
    """``message`` (a skip reason or error from the library) with the ingestion options and
    node config keys it names replaced by this CLI's options.

    Example:
        >>> cli_flags("a.nii: single 2D image, not a volume (pass allow_2d to use it)")
        'a.nii: single 2D image, not a volume (pass --allow-2d to use it)'
    """
    for name, flag in INGEST_FLAGS.items():
        message = message.replace(name, flag)
    return node_flags(message)


def node_flags(message: str) -> str:
    """``message`` with the node config keys it names replaced by this CLI's options."""
    from medidd.config import with_flags

    return with_flags(message, NODE_FLAGS, scope="node config")


class LookUpChoice(click.Choice):
    """A choice option that shows its values in ``--help`` and answers a typo with "did you
    mean" (:func:`medidd.lookup.look_up_option`).

    Example:
        >>> LookUpChoice(["denoise", "sr"], what="task").convert("denoize", None, None)
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        click.exceptions.BadParameter: unknown task 'denoize': did you mean 'denoise'? ...
    """

    def __init__(self, choices: Sequence[str], *, what: str, fold_case: bool = False) -> None:
        super().__init__(list(choices))
        self.what = what
        self.fold_case = fold_case

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> object:
        if self.fold_case and isinstance(value, str):  # `--modality ct` means CT
            value = next((c for c in self.choices if str(c).lower() == value.lower()), value)
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            from medidd.lookup import look_up_option

            try:
                look_up_option(str(value), [str(c) for c in self.choices], what=self.what)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
            raise


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
