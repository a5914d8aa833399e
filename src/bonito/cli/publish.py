"""`bonito export`, `report` and `review`: a run's tasks out to people and datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bonito.cli.common import (
    RunFolder,
    say,
    stdout,
)


def export(
    run: RunFolder,
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder to write.")],
    format_name: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="jsonl, parquet, hf, chat, prompt-completion, openai, alpaca or sharegpt.",
        ),
    ] = "jsonl",
    split_by_document: Annotated[
        float | None,
        typer.Option(
            help="Share of the tasks for a test split, whole documents per side (0.1).",
            show_default="no test split",
        ),
    ] = None,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Also push the dataset and its card to this hub repo.")
    ] = None,
    private: Annotated[
        bool,
        typer.Option(help="Leave out the context, document and source columns and local names."),
    ] = False,
    decontaminate: Annotated[
        Path | None,
        typer.Option(help="Leave out tasks sharing 13 words with this evaluation data file."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in OUTPUT.")] = False,
    reviewed_only: Annotated[
        bool, typer.Option(help="Only the tasks a person accepted with `bonito review`.")
    ] = False,
) -> None:
    """Write the run's accepted tasks, as people reviewed them, as a dataset folder: train (and
    test) files in FORMAT and a dataset card, README.md."""
    from bonito.publish.export import export_run

    result = export_run(
        run,
        output,
        format_name,
        split_by_document=split_by_document,
        push_to_hub=push_to_hub,
        private=private,
        decontaminate=decontaminate,
        overwrite=overwrite,
        reviewed_only=reviewed_only,
    )
    table = Table(title=f"bonito export {run}", show_header=False)
    table.add_row("format", result.format)
    if result.decontamination:
        overlapping = result.decontamination.overlapping_tasks
        table.add_row("left out", f"{overlapping} tasks overlapping the evaluation data")
    for name, side in result.sides.items():
        table.add_row(name, f"{side.tasks} tasks from {len(side.documents)} documents")
    table.add_row("folder", str(result.folder))
    table.add_row("card", str(result.card))
    if result.repo:
        table.add_row("hub", result.repo)
    stdout.print(table)


def report(
    run: RunFolder,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file.", show_default="RUN/report.html"),
    ] = None,
    sample: Annotated[int, typer.Option(help="Tasks in the browsable sample.")] = 200,
) -> None:
    """Write a self-contained HTML report of a run: task-type mix, lengths, rejection reasons,
    coverage and a sample of tasks beside their passages."""
    from bonito.publish.report import write_report

    result = write_report(run, output, sample)
    stdout.print(
        f"report of {result.samples} samples ({result.shown} shown; run {result.state}) "
        f"written to {result.path}",
        highlight=False,
        soft_wrap=True,
    )


def review(
    run: RunFolder,
    host: Annotated[
        str, typer.Option(help="Address to listen on; beyond loopback the URL carries a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0: any free one.")] = 0,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a browser.")] = (
        False
    ),
    sample: Annotated[
        int | None,
        typer.Option(help="Walk a seeded sample of N tasks, stratified by task type and status."),
    ] = None,
) -> None:
    """Serve a local page to accept, reject and edit the run's tasks (also while it generates);
    decisions are saved in the run at once and applied by `bonito export`."""
    import webbrowser

    from bonito.publish.review.server import open_review

    server = open_review(run, host, port, sample)
    for note in server.notes:
        say("note:", note)
    stdout.print(f"reviewing {run} at {server.url}    (Ctrl-C to stop)", soft_wrap=True)
    if open_browser:
        webbrowser.open(server.url)
    server.serve()
