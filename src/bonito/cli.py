"""The `bonito` command: a thin shell over the library that parses options and prints summaries."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from bonito.errors import BonitoError
from bonito.sampling import SamplingParams
from bonito.task_types import TASK_TYPES, resolve_task_type

app = typer.Typer(
    help="Turn unannotated text into instruction-tuning datasets with bonito generators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


@app.command()
def tasks() -> None:
    """List the 16 task types: short form and the full name the model sees."""
    table = Table("short form", "full name")
    for kind in TASK_TYPES:
        table.add_row(kind.short, kind.name)
    Console().print(table)


@app.command()
def generate(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="JSONL/JSON/CSV/TSV/Parquet/text files, "
            "folders, saved datasets or hub dataset ids."
        ),
    ],
    task_type: Annotated[
        list[str],
        typer.Option("--task-type", "-t", help="Short form or full name; repeat for several."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder to write.")],
    model: Annotated[str, typer.Option(help="Hub id or local folder.")] = "BatsResearch/bonito-v1",
    engine: Annotated[str, typer.Option(help="auto, transformers or vllm.")] = "auto",
    context_col: Annotated[str, typer.Option(help="Field or column holding the text.")] = "text",
    split: Annotated[str, typer.Option(help="Split of a dataset input.")] = "train",
    n: Annotated[int, typer.Option(help="Samples per prompt.")] = 1,
    temperature: float = 0.5,
    top_p: float = 0.95,
    max_tokens: int = 256,
    seed: int = 0,
    limit: Annotated[int | None, typer.Option(help="Read at most this many contexts.")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="transformers: fixed batch size (default: sized from memory)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="transformers: cpu, cuda, cuda:1...")] = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE passed to the engine, e.g. tensor_parallel_size=2."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace tasks in an existing run folder.")
    ] = False,
) -> None:
    """Generate tasks from passages and write OUTPUT/tasks.jsonl and OUTPUT/summary.json."""
    from bonito.engines import load_engine
    from bonito.run import generate_to_folder, read_contexts

    kinds = [resolve_task_type(t) for t in task_type]
    sampling = SamplingParams(
        n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    if limit is not None and limit < 1:
        raise BonitoError(f"--limit must be at least 1, got {limit}.")
    tasks_file = output / "tasks.jsonl"
    if tasks_file.exists() and not overwrite:
        raise BonitoError(
            f"{tasks_file} already exists; choose another --output or pass "
            "--overwrite to replace it."
        )
    contexts, skipped = read_contexts(inputs, context_col, split=split, limit=limit)
    for location in skipped[:5]:
        console.print(f"[yellow]skipped[/] empty context at {location}")
    if len(skipped) > 5:
        console.print(f"[yellow]skipped[/] {len(skipped) - 5} more empty contexts")
    kwargs = _engine_kwargs(engine_arg, batch_size=batch_size, device=device)
    with console.status(f"loading {model}"):
        loaded = load_engine(model, engine, **kwargs)
    summary = generate_to_folder(loaded, contexts, kinds, sampling, output, skipped=len(skipped))
    _print_summary(summary, output)


@app.command("tiny-model")
def tiny_model(
    path: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
    seed: int = 0,
) -> None:
    """Build a small offline bonito generator (seconds, deterministic) for smoke tests."""
    from bonito.tiny_model import build_tiny_model

    started = time.perf_counter()
    with console.status("training the tiny generator"):
        build_tiny_model(path, seed=seed)
    console.print(f"tiny bonito model written to {path} in {time.perf_counter() - started:.1f}s")


def _engine_kwargs(pairs: list[str] | None, **options: Any) -> dict[str, Any]:
    kwargs = {key: value for key, value in options.items() if value is not None}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BonitoError(f"--engine-arg '{pair}' is not KEY=VALUE.")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def _print_summary(summary, output: Path) -> None:
    table = Table(title="bonito generate", show_header=False)
    table.add_row("contexts", str(summary.contexts))
    if summary.skipped:
        table.add_row("skipped contexts", _counts(summary.skipped))
    table.add_row("samples", str(summary.samples))
    table.add_row("accepted", str(summary.accepted))
    table.add_row("rejected", _counts(summary.rejected) or "0")
    table.add_row("elapsed", f"{summary.elapsed:.1f}s")
    table.add_row("output tokens/s", f"{summary.tokens_per_second:.1f}")
    table.add_row("tasks", str(output / "tasks.jsonl"))
    Console().print(table)


def _counts(counter) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counter.most_common())


def main() -> None:
    """Console entry point: expected errors end in one clear message and a non-zero exit."""
    logging.basicConfig(
        level=logging.WARNING, handlers=[RichHandler(console=console)], format="%(message)s"
    )
    logging.getLogger("bonito").setLevel(logging.INFO)
    try:
        app(standalone_mode=False)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except BonitoError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
