"""The `bonito` command: a thin shell over the library that parses options and prints summaries."""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import version as package_version
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from bonito.errors import BonitoError
from bonito.generate.judge import counts
from bonito.prompt.sampling import SamplingParams
from bonito.prompt.task_types import TASK_TYPES, TaskType, all_task_types, load_task_types
from bonito.read.chunking import MAX_INPUT_TOKENS

APP_SETTINGS: dict[str, Any] = dict(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: no markup in help texts, no truncated names
    context_settings={"help_option_names": ["-h", "--help"]},
)
app = typer.Typer(
    help="Turn unannotated text into instruction-tuning datasets with bonito generators.",
    **APP_SETTINGS,
)
# what bonito prints is text, never Rich markup: file names and hints keep their [brackets]
console = Console(stderr=True, markup=False, emoji=False, highlight=False)
stdout = Console(markup=False, emoji=False)
INTERRUPTED = 128 + signal.SIGINT
"""The exit status after Ctrl-C, the shell's convention (typer's too)."""


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


DEFAULT_DEVICE = "cuda if there is one, else cpu"
SHOWN_SKIPS = 5
"""Skips printed at the end of a reading; all of them are in skipped.jsonl."""


TaskTypesFile = Annotated[
    Path | None,
    typer.Option(
        "--task-types",
        help="YAML file declaring new task types (short, name, description, check, labels); "
        "see docs/training.md.",
    ),
]


@app.command()
def tasks(task_types: TaskTypesFile = None) -> None:
    """List the task types: short form, the full name the model sees, and the answer check."""
    if task_types:
        load_task_types(task_types)
    table = Table("short form", "full name", "checked", "description")
    for kind in all_task_types():
        table.add_row(kind.short, kind.name, "yes" if kind.check else "", kind.description)
    stdout.print(table)


Inputs = Annotated[
    list[str],
    typer.Argument(
        metavar="INPUT",
        help="Files (PDF, HTML, DOCX, TXT, MD, JSONL, JSON, CSV, TSV, Parquet), folders of them, "
        "saved datasets or hub dataset ids.",
    ),
]
TextField = Annotated[
    str, typer.Option("--text-field", "--context-col", help="Field or column holding the text.")
]
Split = Annotated[str, typer.Option(help="Split of a dataset input.")]
RunFolder = Annotated[Path, typer.Argument(metavar="RUN", help="Run folder.")]
Include = Annotated[
    list[str] | None,
    typer.Option(metavar="GLOB", help="In folders, read only files matching this glob."),
]
Exclude = Annotated[
    list[str] | None, typer.Option(metavar="GLOB", help="In folders, leave out files matching.")
]
LONGEST, SHORTEST = "Longest context, in tokens.", "Shortest context, unless a whole document."
Overlap = Annotated[int, typer.Option(help="Tokens a context repeats from the one before.")]
MaxInputTokens = Annotated[int, typer.Option(help="Longest prompt the model takes, in tokens.")]
Limit = Annotated[
    int | None, typer.Option(help="Read at most this many contexts.", show_default="all")
]
PerDocument = Annotated[
    int | None,
    typer.Option(
        metavar="K",
        help="Read at most the first K contexts of each document (with --limit: a sample of "
        "many documents, not all of the first).",
        show_default="all",
    ),
]
Strict = Annotated[bool, typer.Option(help="Fail when any input or part of one is skipped.")]


@app.command()
def chunk(
    inputs: Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", help="Contexts file to write.")],
    model: Annotated[str, typer.Option(help="Generator whose tokenizer counts tokens.")] = (
        "BatsResearch/bonito-v1"
    ),
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "--max-context-tokens", help=LONGEST)
    ] = 512,
    min_tokens: Annotated[
        int, typer.Option("--min-tokens", "--min-context-tokens", help=SHORTEST)
    ] = 32,
    overlap: Overlap = 0,
    max_input_tokens: MaxInputTokens = MAX_INPUT_TOKENS,
    text_field: TextField = "text",
    split: Split = "train",
    include: Include = None,
    exclude: Exclude = None,
    limit: Limit = None,
    per_document: PerDocument = None,
    strict: Strict = False,
) -> None:
    """Show what `generate` would send, without running the model: write the contexts to OUTPUT
    (JSON Lines) and every skipped input to skipped.jsonl beside it."""
    from bonito.generate.judge import Summary
    from bonito.read.sources import check_inputs
    from bonito.runs.run import check_strict
    from bonito.util.outputs import output_file, written_whole

    check_inputs(inputs, include or (), exclude or ())
    output_file(output)
    chunker = _chunker(model, max_tokens, min_tokens, overlap, max_input_tokens)
    summary, skipped = Summary(), output.parent / "skipped.jsonl"
    reading: dict[str, Any] = dict(
        text_field=text_field, split=split, include=include, exclude=exclude
    )
    reading["per_document"] = per_document
    with written_whole(output) as file:
        for context in _contexts(inputs, chunker, summary, skipped, limit=limit, **reading):
            file.write(json.dumps(context.to_dict(), ensure_ascii=False) + "\n")
    table = _reading_table("bonito chunk", summary, skipped)
    table.add_row("contexts file", str(output))
    stdout.print(table)
    check_strict(summary, strict, skipped)


@app.command()
def generate(
    inputs: Inputs,
    task_type: Annotated[
        list[str],
        typer.Option(
            "--task-type",
            "-t",
            metavar="TYPE",
            help="Task type (short form or full name), `all`, or a weighted mix such as "
            "ynqa:2,exqa:1; repeat for several.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder.")],
    model: Annotated[str, typer.Option(help="Hub id or local folder.")] = "BatsResearch/bonito-v1",
    engine: Annotated[
        str,
        typer.Option(
            help="auto, transformers, vllm, openai (a server: --base-url) or llamacpp (a .gguf)."
        ),
    ] = "auto",
    text_field: TextField = "text",
    split: Split = "train",
    include: Include = None,
    exclude: Exclude = None,
    max_context_tokens: Annotated[int, typer.Option(help=LONGEST)] = 512,
    min_context_tokens: Annotated[int, typer.Option(help=SHORTEST)] = 32,
    overlap: Overlap = 0,
    max_input_tokens: MaxInputTokens = MAX_INPUT_TOKENS,
    per_context: Annotated[
        int | None,
        typer.Option(
            help="Task types asked per context, drawn from the mix by weight.",
            show_default="all",
        ),
    ] = None,
    n: Annotated[int, typer.Option(help="Samples per prompt.")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 0.5,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling's probability mass.")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Longest completion, in tokens.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the task-type draws and sampling.")] = 0,
    limit: Limit = None,
    per_document: PerDocument = None,
    checks: Annotated[
        bool, typer.Option(help="Task-aware checks; --no-checks keeps every parseable sample.")
    ] = True,
    dedup: Annotated[
        str | None,
        typer.Option(help="near, exact or off.", show_default="near; off with --no-checks"),
    ] = None,
    dedup_threshold: Annotated[
        float,
        typer.Option(help="Word-shingle Jaccard similarity from which tasks are near-duplicates."),
    ] = 0.8,
    max_tasks: Annotated[
        int | None,
        typer.Option(help="Stop after this many accepted tasks.", show_default="no limit"),
    ] = None,
    max_output_tokens: Annotated[
        int | None,
        typer.Option(help="Stop after generating this many tokens.", show_default="no limit"),
    ] = None,
    retry_rejected: Annotated[
        int,
        typer.Option(help="Ask again, up to this many times, for contexts with no accepted task."),
    ] = 0,
    strict: Strict = False,
    batch_size: Annotated[
        int | None,
        typer.Option(help="transformers: fixed batch size.", show_default="sized from memory"),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="transformers: cpu, cuda, cuda:1...", show_default=DEFAULT_DEVICE),
    ] = None,
    decoder: Annotated[
        str | None,
        typer.Option(
            help="transformers: auto (graphs on CUDA, dynamic on CPU), dynamic, static, graphs "
            "or compiled (docs/architecture.md).",
            show_default="auto",
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="openai: the server's root or its /v1, e.g. http://127.0.0.1:8000/v1."),
    ] = None,
    served_model: Annotated[
        str | None,
        typer.Option(
            help="openai: the model name the server knows.",
            show_default="--model if it serves it, else the one model it lists",
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="openai: environment variable holding the server's API key (never written "
            "anywhere); no key is sent without it."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="openai: requests in flight at most, fewer while the server pushes back.",
            show_default="16",
        ),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(help="openai: seconds one request may take.", show_default="600"),
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            help="openai: times a request is sent again after a timeout, a dropped connection, "
            "a 429 or a 5xx.",
            show_default="8",
        ),
    ] = None,
    remote_warning: Annotated[
        bool | None,
        typer.Option(
            "--remote-warning/--no-remote-warning",
            help="openai: warn when --base-url is neither this machine nor a private network.",
            show_default="on",
        ),
    ] = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE", help="Passed to the engine, e.g. tensor_parallel_size=2."
        ),
    ] = None,
    task_types_file: TaskTypesFile = None,
    overwrite: Annotated[
        bool, typer.Option(help="Start the run in OUTPUT over, dropping what it holds.")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            metavar="auto|local|ADDRESS",
            help="Generate on a Ray cluster (the ray extra): the one this machine is in, one "
            "started here, or the one at ADDRESS (docs/scale-out.md).",
        ),
    ] = None,
    engines: Annotated[
        int | None, typer.Option(help="--ray: engines to start.", show_default="all GPUs")
    ] = None,
    gpus_per_engine: Annotated[
        float | None,
        typer.Option(
            help="--ray: GPUs per engine, 0 on CPUs.",
            show_default="tensor_parallel_size, else 1; 0 on a cluster without GPUs",
        ),
    ] = None,
) -> None:
    """Generate tasks from documents into the run folder OUTPUT (its store run.sqlite, and
    tasks.jsonl, summary.json, skipped.jsonl). The same command again continues the run. A
    generator trained by `bonito train` brings its own task types."""
    from bonito.engines import load_engine
    from bonito.generate.mix import TaskMix
    from bonito.models import resolve_device
    from bonito.prompt.task_types import load_declared_task_types
    from bonito.runs.run import (
        SKIPPED_FILE,
        TASKS_FILE,
        Budgets,
        RunConfig,
        accepted_line,
        generate_run,
    )
    from bonito.runs.scale import cluster_option

    load_declared_task_types(model)
    if task_types_file:
        load_task_types(task_types_file)
    mix = TaskMix.parse(task_type)
    sampling = SamplingParams(
        n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    budgets = Budgets(max_tasks, max_output_tokens, retry_rejected)
    chunking = dict(
        max_tokens=max_context_tokens,
        min_tokens=min_context_tokens,
        overlap=overlap,
        max_input_tokens=max_input_tokens,
    )
    reading = dict(
        text_field=text_field,
        split=split,
        include=include or [],
        exclude=exclude or [],
        limit=limit,
        per_document=per_document,
    )
    config = RunConfig(
        model,
        tuple(inputs),
        mix,
        mix.check_per_context(per_context),
        sampling,
        reading,
        chunking,
        checks,
        dedup or ("near" if checks else "off"),  # --no-checks alone: the original's output
        dedup_threshold,
    )
    if device:
        resolve_device(device)  # before the reading, not after it
    kwargs = _engine_kwargs(
        engine_arg,
        batch_size=batch_size,
        device=device,
        decoder=decoder,
        base_url=base_url,
        served_model=served_model,
        api_key_env=api_key_env,
        concurrency=concurrency,
        timeout=request_timeout,
        max_retries=max_retries,
        remote_warning=remote_warning,
    )

    def load():
        with _working(f"loading {model}"):
            return load_engine(model, engine, **kwargs)

    cluster = cluster_option(ray, engines, gpus_per_engine, kwargs)
    if cluster:
        load = functools.partial(load_engine, model, engine, **kwargs)  # sent to the workers

    outcome = generate_run(
        output,
        config,
        load,
        budgets=budgets,
        overwrite=overwrite,
        strict=strict,
        make_chunker=lambda: _chunker(model, **chunking, task_types=mix.types),
        engine_name=engine,
        cluster=cluster,
    )
    summary, state, skipped = outcome.summary, outcome.state, output / SKIPPED_FILE
    table = _reading_table("bonito generate", summary, skipped)
    table.add_row("samples", str(summary.samples))
    table.add_row("accepted", accepted_line(summary.to_dict()))
    table.add_row("duplicates", str(summary.duplicates))
    table.add_row("rejected", counts(summary.rejected) or "0")
    table.add_row("generation time", f"{summary.elapsed:.1f}s")
    table.add_row("output tokens/s", f"{summary.tokens_per_second:.1f}")
    table.add_row("state", state)
    table.add_row("tasks", str(output / TASKS_FILE))
    stdout.print(table)
    if outcome.error:
        raise BonitoError(outcome.error)
    run = shlex.quote(str(output))
    stdout.print(
        f"next: bonito report {run}    (samples, rejections and coverage in one page)\n"
        f"      bonito export {run} -o {shlex.quote(str(output) + '-dataset')}    "
        "(the accepted tasks as a dataset)",
        soft_wrap=True,
    )


@app.command()
def status(
    run: RunFolder,
    as_json: Annotated[
        bool, typer.Option("--json", help="The same facts as one JSON object, on stdout.")
    ] = False,
) -> None:
    """Progress, rates, ETA and counts of a running or finished run."""
    from bonito.runs.run import status as run_status
    from bonito.runs.run import status_facts

    if as_json:
        print(json.dumps(status_facts(run), indent=2))
        return
    report = run_status(run)
    table = Table(title=f"bonito status {run}", show_header=False)
    for name, value in report.items():
        table.add_row(name, value)
    stdout.print(table)


@app.command()
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


@app.command()
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


@app.command()
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
        _say("note:", note)
    stdout.print(f"reviewing {run} at {server.url}    (Ctrl-C to stop)", soft_wrap=True)
    if open_browser:
        webbrowser.open(server.url)
    server.serve()


def _chunker(
    model: str,
    max_tokens: int,
    min_tokens: int,
    overlap: int,
    max_input_tokens: int,
    task_types: Sequence[TaskType] = TASK_TYPES,
):
    from bonito.read.chunking import Chunker

    with _working(f"loading the tokenizer of {model}"):
        return Chunker.from_model(
            model,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            overlap=overlap,
            max_input_tokens=max_input_tokens,
            task_types=task_types,
        )


def _contexts(
    inputs: list[str],
    chunker,
    summary,
    skipped: Path,
    *,
    include: list[str] | None,
    exclude: list[str] | None,
    **reading: Any,
):
    """The contexts of the inputs, with a progress bar on a terminal."""
    from bonito.runs.run import bar, read_contexts

    contexts = read_contexts(
        inputs, chunker, summary, skipped, include=include or (), exclude=exclude or (), **reading
    )
    return bar(contexts, desc="reading", unit=" contexts", total=reading.get("limit"))


def _reading_table(title: str, summary, skipped: Path) -> Table:
    """The summary of a reading; the first skips go to stderr, all of them are in `skipped`."""
    with skipped.open(encoding="utf-8") as file:
        for record in map(json.loads, islice(file, SHOWN_SKIPS)):
            _say("skipped", f"{record['source']} {record['detail']} ({record['reason']})")
    if summary.skipped.total() > SHOWN_SKIPS:
        more = summary.skipped.total() - SHOWN_SKIPS
        _say("skipped", f"{more} more; see {skipped}")
    table = Table(title=title, show_header=False)
    table.add_row("documents", str(summary.documents))
    table.add_row("contexts", str(summary.contexts))
    if summary.capped:
        table.add_row("left out", f"{summary.capped} contexts past --per-document")
    mean = summary.context_tokens / summary.contexts if summary.contexts else 0
    table.add_row("context tokens", f"{summary.context_tokens} ({mean:.0f} per context)")
    table.add_row("skipped", counts(summary.skipped) or "0")
    if summary.skipped:
        table.add_row("skipped file", str(skipped))
    return table


@app.command("tiny-model")
def tiny_model(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Folder to write the model to.")],
    seed: Annotated[int, typer.Option(help="Seed of the weights and the training.")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Build it again in a folder that holds a model already.")
    ] = False,
) -> None:
    """Build a small offline bonito generator for smoke tests: deterministic, about two minutes
    on 2 CPU cores."""
    from bonito.train.tiny_model import build_tiny_model

    started = time.perf_counter()
    with _working("training the tiny generator (about two minutes)"):
        build_tiny_model(path, seed=seed, overwrite=overwrite)
    console.print(f"tiny bonito model written to {path} in {time.perf_counter() - started:.1f}s")


ctga_app = typer.Typer(
    help="ctga: bonito training pairs from promptsource templates (see docs/ctga.md).",
    **APP_SETTINGS,
)
app.add_typer(ctga_app, name="ctga")


@ctga_app.command("build")
def ctga_build(
    templates: Annotated[
        Path, typer.Option(help="promptsource templates folder (DATASET[/SUBSET]/templates.yaml).")
    ],
    annotations: Annotated[
        Path, typer.Option(help="CSV: dataset_name, dataset_config_name, template_name, task_type.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Pairs file: .jsonl or .parquet.")],
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SPEC", help="name[/subset]=SOURCE:passage_field[:split]; repeat for more."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON list of datasets (name, subset, source, ...).")
    ] = None,
    per_dataset: Annotated[
        int | None, typer.Option(help="At most this many pairs a dataset.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the row order and template draws.")] = 0,
    every_template: Annotated[
        bool, typer.Option(help="Every annotated template on each row, not one drawn at random.")
    ] = False,
    truncate_passage: Annotated[
        bool, typer.Option(help="Cut passages past 2,048 characters as promptsource (ctga-v1).")
    ] = True,
    passage_in_answer: Annotated[
        bool, typer.Option(help="Keep templates whose answer alone holds the passage (ctga-v1).")
    ] = False,
    task_types_file: TaskTypesFile = None,
) -> None:
    """Build bonito training pairs (source, target, provenance) from promptsource templates
    annotated with task types (built-in ones, or new ones declared with --task-types) and the
    datasets they were written for."""
    from bonito.train.ctga import Summary, build_ctga, load_specs, parse_spec, write_pairs

    if task_types_file:
        load_task_types(task_types_file)

    specs = [parse_spec(text) for text in dataset or []]
    if config is not None:
        specs += load_specs(config)
    if not specs:
        raise BonitoError("Give the datasets with --dataset or --config.")
    summary = Summary()
    pairs = build_ctga(
        specs,
        templates,
        annotations,
        per_dataset=per_dataset,
        seed=seed,
        every_template=every_template,
        truncate_passage=truncate_passage,
        passage_in_answer=passage_in_answer,
        summary=summary,
    )
    with _working("building ctga pairs"):
        written = write_pairs(pairs, output)
    table = Table(title=f"bonito ctga build -> {output}", show_header=False)
    for label, count in summary.pairs.items():
        table.add_row(label, f"{count} pairs")
    table.add_row("task types", counts(summary.task_types) or "0")
    table.add_row("skipped", counts(summary.skipped) or "0")
    for reason, seen in summary.first.items():
        table.add_row(f"first {reason}", seen)
    table.add_row("written", str(written))
    stdout.print(table)
    if not written:
        output.unlink(missing_ok=True)  # an empty file would look like a result
        raise summary.nothing_made()


# the training recipe's options, shared by train, finetune and adapt (defaults are each one's)
LoraRank = Annotated[int, typer.Option(help="LoRA rank.")]
LoraAlpha = Annotated[float, typer.Option(help="LoRA alpha.")]
LoraDropout = Annotated[float, typer.Option(help="LoRA dropout.")]
Full = Annotated[bool, typer.Option(help="Train every weight instead of LoRA adapters.")]
Quantize = Annotated[
    bool | None,
    typer.Option(help="4-bit NF4 base (Q-LoRA).", show_default="on with CUDA for LoRA, else off"),
]
LearningRate = Annotated[float, typer.Option(help="Peak learning rate.")]
WarmupSteps = Annotated[int, typer.Option(help="Steps of linear warm-up.")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay.")]
MaxGradNorm = Annotated[float, typer.Option(help="Gradient norm clipping.")]
BatchSize = Annotated[int, typer.Option(help="Pairs per optimizer step.")]
MicroBatchSize = Annotated[
    int, typer.Option(help="Pairs per forward pass (gradient accumulation makes the rest).")
]
Epochs = Annotated[float, typer.Option(help="Passes over the pairs.")]
MaxSteps = Annotated[
    int | None, typer.Option(help="Optimizer steps, instead of --epochs.", show_default="none")
]
MaxSourceTokens = Annotated[int, typer.Option(help="Longer sources are skipped and counted.")]
MaxTargetTokens = Annotated[int, typer.Option(help="Longer targets are skipped and counted.")]
Optimizer = Annotated[
    str | None,
    typer.Option(
        help="A transformers optimizer name.",
        show_default="paged_adamw_32bit on CUDA with bitsandbytes, else adamw_torch",
    ),
]
SaveSteps = Annotated[int, typer.Option(help="Steps between checkpoints (0: none).")]
LoggingSteps = Annotated[int, typer.Option(help="Steps between loss lines.")]


def _recipe(options: dict[str, Any]):
    """The training recipe from a command's parameters (its `locals()`): those named like
    Recipe's fields, the rest at Recipe's defaults; --full trains every weight (no LoRA)."""
    from dataclasses import fields

    from bonito.train.trainer import Recipe

    values = {f.name: options[f.name] for f in fields(Recipe) if f.name in options}
    return Recipe(**values | ({"lora_r": None} if options.get("full") else {}))


def _training_table(title: str, summary: dict[str, Any], pairs: str) -> Table:
    """A training's summary: its pairs, those skipped, steps, loss and speed."""
    table = Table(title=title, show_header=False)
    table.add_row("pairs", pairs)
    table.add_row("skipped", counts(Counter(summary["pairs"]["skipped"])) or "0")
    table.add_row("steps", str(summary["steps"]))
    if summary["train_loss"]:
        first, last = summary["train_loss"][0][1], summary["train_loss"][-1][1]
        table.add_row("train loss", f"{first:.4f} -> {last:.4f}")
    if summary["tokens_per_second"]:
        table.add_row("tokens/s", f"{summary['tokens_per_second']:,.0f}")
    return table


@app.command()
def train(
    data: Annotated[
        str, typer.Option(help="Pairs: `bonito ctga build` output, a saved dataset or hub id.")
    ],
    base_model: Annotated[str, typer.Option(help="Base model: hub id or local folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the generator.")],
    task_types_file: TaskTypesFile = None,
    split: Split = "train",
    held_out: Annotated[
        int, typer.Option(help="Pairs held out for evaluation (at most a tenth).")
    ] = 200,
    eval_generations: Annotated[
        int, typer.Option(help="Held-out pairs completed greedily at each evaluation.")
    ] = 64,
    eval_max_tokens: Annotated[int, typer.Option(help="New tokens per such completion.")] = 256,
    lora_r: LoraRank = 64,
    lora_alpha: LoraAlpha = 4.0,
    lora_dropout: LoraDropout = 0.0,
    full: Full = False,
    quantize: Quantize = None,
    learning_rate: LearningRate = 1e-4,
    warmup_steps: WarmupSteps = 0,
    weight_decay: WeightDecay = 0.0,
    max_grad_norm: MaxGradNorm = 0.3,
    batch_size: BatchSize = 16,
    micro_batch_size: MicroBatchSize = 4,
    epochs: Epochs = 1.0,
    max_steps: MaxSteps = None,
    max_source_tokens: MaxSourceTokens = 2048,
    max_target_tokens: MaxTargetTokens = 2048,
    optimizer: Optimizer = None,
    save_steps: SaveSteps = 500,
    eval_steps: Annotated[int, typer.Option(help="Steps between evaluations.")] = 500,
    logging_steps: LoggingSteps = 10,
    seed: Annotated[int, typer.Option(help="Seed of the split, order and initialisation.")] = 0,
    merged: Annotated[
        bool, typer.Option(help="Also save the adapter merged into its base (OUTPUT/merged).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start over, dropping the checkpoints in OUTPUT.")
    ] = False,
) -> None:
    """Train a bonito generator on ctga pairs with bonito-v1's recipe (Q-LoRA on CUDA, LoRA on
    CPU; every value can be changed). The same command again resumes from the last checkpoint.
    `bonito generate --model OUTPUT` then uses it."""
    from bonito.train.ctga import load_pairs
    from bonito.train.generator import train_generator

    recipe = _recipe(locals())
    if task_types_file:
        load_task_types(task_types_file)
    with _working(f"reading {data}"):
        pairs = load_pairs(data, split)
    summary = train_generator(
        pairs,
        base_model,
        output,
        recipe,
        held_out=held_out,
        eval_generations=eval_generations,
        eval_max_tokens=eval_max_tokens,
        merged=merged,
        overwrite=overwrite,
        data=data,
    )
    counted = summary["pairs"]
    pairs_line = f"{counted['train']} train, {counted['held_out']} held out"
    table = _training_table(f"bonito train -> {output}", summary, pairs_line)
    if summary["eval_loss"]:
        table.add_row(
            "held-out loss",
            f"{summary['eval_loss'][0][1]:.4f} -> {summary['eval_loss'][-1][1]:.4f}",
        )
    if summary["generations"]:
        scores = summary["generations"]["all"]
        table.add_row("held-out parse", f"{scores['parse_rate']:.0%}")
        table.add_row("passage in instruction", f"{scores['placeholder_rate']:.0%}")
    stdout.print(table)


# the evaluation's options, shared by evaluate and adapt
DataFormat = Annotated[
    str,
    typer.Option(
        help="labelled (the schema), or a set's own format: pubmedqa, contractnli, vitaminc, "
        "squadshifts or policyqa."
    ),
]
Templates = Annotated[
    str, typer.Option(help="all, the first N, or template names separated by commas.")
]
PromptFormat = Annotated[
    str, typer.Option(help="input-output (<|input|>/<|output|>) or chat (chat template).")
]
EvalLimit = Annotated[
    int | None, typer.Option(help="Evaluate the first N examples.", show_default="all")
]


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Target model: hub id or local folder.")],
    data: Annotated[Path, typer.Option(help="Labelled data, JSON Lines (docs/evaluation.md).")],
    task_type: Annotated[
        str, typer.Option("--task-type", "-t", help="ynqa, nli or exqa (or the full name).")
    ],
    adapter: Annotated[
        Path | None, typer.Option(help="PEFT adapter folder to apply to the model.")
    ] = None,
    data_format: DataFormat = "labelled",
    templates: Templates = "all",
    prompt_format: PromptFormat = "input-output",
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 8,
    limit: EvalLimit = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1...", show_default=DEFAULT_DEVICE)
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="JSON file for scores and predictions.")
    ] = None,
) -> None:
    """Evaluate a target model on labelled data with several prompt templates: ynqa and nli by
    ranked classification (accuracy, macro-F1), exqa by greedy generation (SQuAD EM, F1)."""
    from bonito.evaluation import evaluate_model
    from bonito.evaluation.metrics import metric_name
    from bonito.util.outputs import output_file

    if output:
        output_file(output)  # before the evaluation, whose scores would be lost
    result = evaluate_model(
        model,
        data,
        task_type,
        adapter=adapter,
        data_format=data_format,
        templates=templates,
        prompt_format=prompt_format,
        batch_size=batch_size,
        limit=limit,
        device=device,
    )
    if output:
        result.save(output)
    metrics = list(result.average)
    names = [metric_name(m) for m in metrics]
    table = Table("template", *names, title=f"bonito evaluate ({result.examples} examples, %)")
    for row in result.templates:
        table.add_row(row.template, *(f"{100 * row.scores[m]:.1f}" for m in metrics))
    table.add_row("average", *(f"{100 * result.average[m]:.1f}" for m in metrics), style="bold")
    stdout.print(table)
    if output:
        console.print(f"scores and predictions written to {output}")


@app.command()
def finetune(
    tasks: Annotated[
        str,
        typer.Argument(
            metavar="TASKS",
            help="Generated tasks: a run folder (its accepted tasks), or an export of one (its "
            "folder, a JSONL/Parquet file, a saved dataset or a hub id).",
        ),
    ],
    base_model: Annotated[str, typer.Option(help="Target model: hub id or local folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the adapter.")],
    prompt_format: PromptFormat = "input-output",
    split: Split = "train",
    lora_r: LoraRank = 64,
    lora_alpha: LoraAlpha = 16.0,
    lora_dropout: LoraDropout = 0.0,
    full: Full = False,
    quantize: Quantize = None,
    learning_rate: LearningRate = 1e-4,
    warmup_steps: WarmupSteps = 0,
    weight_decay: WeightDecay = 0.0,
    max_grad_norm: MaxGradNorm = 0.3,
    batch_size: BatchSize = 16,
    micro_batch_size: MicroBatchSize = 4,
    epochs: Epochs = 1.0,
    max_steps: Annotated[
        int | None,
        typer.Option(help="Optimizer steps.", show_default="--epochs passes, at most 10,000"),
    ] = None,
    max_source_tokens: MaxSourceTokens = 2048,
    max_target_tokens: MaxTargetTokens = 2048,
    optimizer: Optimizer = None,
    save_steps: SaveSteps = 500,
    logging_steps: LoggingSteps = 10,
    seed: Annotated[int, typer.Option(help="Seed of the order and initialisation.")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Start over, dropping the checkpoints in OUTPUT.")
    ] = False,
) -> None:
    """Fine-tune a target model on generated tasks, the loss on the output only, with the
    paper's recipe (Q-LoRA on CUDA, LoRA on CPU, alpha 16; one epoch, at most 10,000 steps). The
    same command again resumes from the last checkpoint; `bonito evaluate --adapter OUTPUT`
    scores the result."""
    from bonito.adapt.adaptation import finetune as finetune_tasks

    recipe = _recipe(locals())
    summary = finetune_tasks(
        tasks,
        base_model,
        output,
        recipe,
        prompt_format=prompt_format,
        split=split,
        overwrite=overwrite,
    )
    trained = f"{summary['pairs']['train']} tasks from {tasks}"
    stdout.print(_training_table(f"bonito finetune -> {output}", summary, trained))


@app.command()
def adapt(
    unlabelled: Annotated[
        list[str],
        typer.Option(
            metavar="PATH",
            help="Unlabelled passages of the domain, as `generate` reads them; repeat for more.",
        ),
    ],
    labelled: Annotated[Path, typer.Option(help="Labelled data to evaluate on.")],
    task_type: Annotated[
        str, typer.Option("--task-type", "-t", help="ynqa, nli or exqa: generated and evaluated.")
    ],
    base_model: Annotated[str, typer.Option(help="Target model: hub id or local folder.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for every stage and the table.")
    ],
    generator: Annotated[str, typer.Option(help="Bonito generator: hub id or local folder.")] = (
        "BatsResearch/bonito-v1"
    ),
    baseline: Annotated[
        str | None, typer.Option(help="tapt: also a copy continued-pretrained on the passages.")
    ] = None,
    prompt_format: PromptFormat = "input-output",
    engine: Annotated[str, typer.Option(help="Generation engine, as for `generate`.")] = (
        "transformers"
    ),
    device: Annotated[
        str | None,
        typer.Option(
            help="cpu, cuda, cuda:1... for generation and evaluation.", show_default=DEFAULT_DEVICE
        ),
    ] = None,
    text_field: TextField = "text",
    split: Split = "train",
    max_context_tokens: Annotated[int, typer.Option(help=LONGEST)] = 512,
    min_context_tokens: Annotated[int, typer.Option(help=SHORTEST)] = 32,
    n: Annotated[int, typer.Option(help="Samples per prompt.")] = SamplingParams.n,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature (0: greedy).")
    ] = SamplingParams.temperature,
    max_tasks: Annotated[
        int | None,
        typer.Option(
            help="Stop generating after this many accepted tasks.", show_default="no limit"
        ),
    ] = None,
    data_format: DataFormat = "labelled",
    templates: Templates = "all",
    limit: EvalLimit = None,
    eval_batch_size: Annotated[int, typer.Option(help="Prompts per evaluation pass.")] = 8,
    lora_r: LoraRank = 64,
    lora_alpha: LoraAlpha = 16.0,
    quantize: Quantize = None,
    learning_rate: LearningRate = 1e-4,
    max_steps: Annotated[
        int | None,
        typer.Option(
            help="Optimizer steps of the fine-tuning.", show_default="1 epoch, at most 10,000"
        ),
    ] = None,
    batch_size: BatchSize = 16,
    micro_batch_size: MicroBatchSize = 4,
    save_steps: SaveSteps = 500,
    logging_steps: LoggingSteps = 10,
    seed: Annotated[int, typer.Option(help="Seed of the generation and the trainings.")] = 0,
    keep_contaminated: Annotated[
        bool, typer.Option(help="Train on tasks that share 13 words with the labelled data too.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Start every stage in OUTPUT over.")] = False,
) -> None:
    """Adapt a target model to a domain as the Bonito paper does: generate tasks of the task type
    from the unlabelled passages, fine-tune the model on them, and evaluate it on the labelled
    data beside the zero-shot base (and, with --baseline tapt, a copy continued-pretrained on
    the passages). The table goes to OUTPUT/results.md and results.json (docs/adaptation.md);
    the same command again continues a stopped stage and reuses finished ones."""
    from bonito.adapt.adaptation import RESULTS_MD, Benchmark
    from bonito.adapt.adaptation import adapt as adapt_model
    from bonito.evaluation.metrics import metric_name
    from bonito.generate.mix import TaskMix
    from bonito.runs.run import Budgets, RunConfig

    recipe = _recipe(locals())
    mix = TaskMix.parse([task_type])
    generation = RunConfig(
        generator,
        tuple(unlabelled),
        mix,
        mix.check_per_context(None),
        SamplingParams(n=n, temperature=temperature, seed=seed),
        # as `generate` writes them, so that a run it made in OUTPUT/generate is taken up
        reading={
            "text_field": text_field,
            "split": split,
            "include": [],
            "exclude": [],
            "limit": None,
            "per_document": None,
        },
        chunking={
            "max_tokens": max_context_tokens,
            "min_tokens": min_context_tokens,
            "overlap": 0,
            "max_input_tokens": MAX_INPUT_TOKENS,
        },
    )
    benchmark = Benchmark(
        str(labelled), task_type, data_format, templates, limit, eval_batch_size, device
    )
    table = adapt_model(
        output,
        generation,
        benchmark,
        base_model,
        engine=engine,
        engine_options=_engine_kwargs(None, device=device),
        budgets=Budgets(max_tasks),
        recipe=recipe,
        prompt_format=prompt_format,
        baseline=baseline,
        keep_contaminated=keep_contaminated,
        overwrite=overwrite,
    )
    metrics = table["metrics"]
    title = f"bonito adapt ({table['examples']} examples, %, mean of the templates)"
    shown = Table("model", *(metric_name(m) for m in metrics), title=title)
    for row in table["rows"]:
        shown.add_row(row["label"], *(f"{100 * row['scores'][m]:.1f}" for m in metrics))
    stdout.print(shown)
    console.print(f"table and settings written to {output / RESULTS_MD}")


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


def _working(message: str):
    """A spinner on stderr while something slow runs."""
    return console.status(Text(message))


def _say(label: str, message: str, style: str = "yellow") -> None:
    """One line on stderr: a coloured label, then the message as it is."""
    console.print(Text.assemble((label, style), " ", message), soft_wrap=True)


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
        _say("error:", str(error), style="bold red")
        code = 1
    except KeyboardInterrupt:  # before or after a command
        code = INTERRUPTED
    if code == INTERRUPTED:
        _say("interrupted;", "run the same command to continue")
    sys.exit(code or 0)
