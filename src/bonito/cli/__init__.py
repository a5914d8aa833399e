"""The `bonito` command: a thin shell over the library that parses options and prints summaries.
One module per command group; this one assembles them, in the order `--help` lists them."""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import version as package_version
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.table import Table

from bonito.cli.adapt import adapt, evaluate, finetune
from bonito.cli.common import (
    APP_SETTINGS,
    INTERRUPTED,
    TaskTypesFile,
    console,
    say,
    stdout,
)
from bonito.cli.generate import chunk, generate, status
from bonito.cli.publish import export, report, review
from bonito.cli.train import ctga_app, tiny_model, train
from bonito.errors import BonitoError
from bonito.prompt.task_types import all_task_types, load_task_types

app = typer.Typer(
    help="Turn unannotated text into instruction-tuning datasets with bonito generators.",
    **APP_SETTINGS,
)


def _show_version(asked: bool) -> None:
    if asked:
        stdout.print(f"bonito {package_version('bonito')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """The options before a command."""


@app.command()
def tasks(task_types: TaskTypesFile = None) -> None:
    """List the task types: short form, the full name the model sees, and the answer check."""
    if task_types:
        load_task_types(task_types)
    table = Table("short form", "full name", "checked", "description")
    for kind in all_task_types():
        table.add_row(kind.short, kind.name, "yes" if kind.check else "", kind.description)
    stdout.print(table)


app.command()(chunk)
app.command()(generate)
app.command()(status)
app.command()(export)
app.command()(report)
app.command()(review)
app.command("tiny-model")(tiny_model)
app.add_typer(ctga_app, name="ctga")
app.command()(train)
app.command()(evaluate)
app.command()(finetune)
app.command()(adapt)


def _quiet_libraries() -> None:
    """bonito's log lines on stderr through Rich; the hub's and datasets' through their own
    handlers only (not twice), and no progress bars of datasets' own work."""
    handler = RichHandler(console=console, show_time=False, show_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("bonito").setLevel(logging.INFO)
    for library in ("huggingface_hub", "datasets"):
        logging.getLogger(library).propagate = False
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    """Console entry point: a usage mistake ends in click's usage error (exit 2), a BonitoError
    in its one sentence (exit 1), Ctrl-C in `interrupted` (exit 130); never in a traceback."""
    _quiet_libraries()
    try:
        # typer returns the status of a typer.Exit, and turns Ctrl-C in a command into one
        code = app(standalone_mode=False, prog_name="bonito")
    except typer.TyperException as error:  # the usage errors of typer's own click
        error.show()  # type: ignore[attr-defined]  # typer's own click has it; its stub does not
        code = error.exit_code
    except BonitoError as error:
        say("error:", str(error), style="bold red")
        code = 1
    except KeyboardInterrupt:  # before or after a command
        code = INTERRUPTED
    if code == INTERRUPTED:
        say("interrupted;", "run the same command to continue")
    sys.exit(code or 0)
