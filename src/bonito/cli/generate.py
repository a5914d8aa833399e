"""`bonito chunk`, `generate` and `status`: documents into a run."""

from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bonito.cli.common import (
    DEFAULT_DEVICE,
    SHOWN_SKIPS,
    Exclude,
    Include,
    Inputs,
    Limit,
    MaxContextTokens,
    MaxInputTokens,
    MinContextTokens,
    Overlap,
    PerDocument,
    RunFolder,
    Samples,
    Split,
    Strict,
    TaskTypesFile,
    Temperature,
    TextField,
    engine_kwargs,
    option,
    say,
    stdout,
    working,
)
from bonito.errors import BonitoError
from bonito.generate.judge import counts
from bonito.models import DEFAULT_GENERATOR
from bonito.prompt.sampling import SamplingParams
from bonito.prompt.task_types import TASK_TYPES, TaskType, load_task_types
from bonito.read.config import Chunking, Reading
from bonito.runs.run import SKIPPED_FILE, Budgets, RunConfig
from bonito.runs.state import state_line


def chunk(
    inputs: Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", help="Contexts file to write.")],
    model: Annotated[str, typer.Option(help="Generator whose tokenizer counts tokens.")] = (
        DEFAULT_GENERATOR
    ),
    max_tokens: Annotated[
        int, option(Chunking, "max_tokens", "--max-tokens", "--max-context-tokens")
    ] = Chunking.max_tokens,
    min_tokens: Annotated[
        int, option(Chunking, "min_tokens", "--min-tokens", "--min-context-tokens")
    ] = Chunking.min_tokens,
    overlap: Overlap = Chunking.overlap,
    max_input_tokens: MaxInputTokens = Chunking.max_input_tokens,
    text_field: TextField = Reading.text_field,
    split: Split = Reading.split,
    include: Include = None,
    exclude: Exclude = None,
    limit: Limit = Reading.limit,
    per_document: PerDocument = Reading.per_document,
    strict: Strict = False,
) -> None:
    """Show what `generate` would send, without running the model: write the contexts to OUTPUT
    (JSON Lines) and every skipped input to skipped.jsonl beside it."""
    from bonito.runs.run import write_contexts

    chunking = Chunking(max_tokens, min_tokens, overlap, max_input_tokens)
    reading = Reading(
        text_field, split, tuple(include or ()), tuple(exclude or ()), limit, per_document
    )
    summary = write_contexts(
        output,
        model,
        inputs,
        reading,
        chunking,
        strict=strict,
        make_chunker=lambda: _chunker(model, chunking),
    )
    skipped = output.parent / SKIPPED_FILE
    table = _reading_table("bonito chunk", summary, skipped)
    table.add_row("contexts file", str(output))
    stdout.print(table)


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
    model: Annotated[str, typer.Option(help="Hub id or local folder.")] = DEFAULT_GENERATOR,
    engine: Annotated[
        str,
        typer.Option(
            help="auto, transformers, vllm, openai (a server: --base-url) or llamacpp (a .gguf)."
        ),
    ] = "auto",
    text_field: TextField = Reading.text_field,
    split: Split = Reading.split,
    include: Include = None,
    exclude: Exclude = None,
    max_context_tokens: MaxContextTokens = Chunking.max_tokens,
    min_context_tokens: MinContextTokens = Chunking.min_tokens,
    overlap: Overlap = Chunking.overlap,
    max_input_tokens: MaxInputTokens = Chunking.max_input_tokens,
    per_context: Annotated[
        int | None,
        typer.Option(
            help="Task types asked per context, drawn from the mix by weight.",
            show_default="all",
        ),
    ] = None,
    n: Samples = SamplingParams.n,
    temperature: Temperature = SamplingParams.temperature,
    top_p: Annotated[float, option(SamplingParams, "top_p")] = SamplingParams.top_p,
    max_tokens: Annotated[int, option(SamplingParams, "max_tokens")] = SamplingParams.max_tokens,
    seed: Annotated[int, typer.Option(help="Seed of the task-type draws and sampling.")] = 0,
    limit: Limit = Reading.limit,
    per_document: PerDocument = Reading.per_document,
    checks: Annotated[bool, option(RunConfig, "checks")] = RunConfig.checks,
    dedup: Annotated[
        str | None, option(RunConfig, "dedup", show_default="near; off with --no-checks")
    ] = RunConfig.dedup,
    dedup_threshold: Annotated[
        float, option(RunConfig, "dedup_threshold")
    ] = RunConfig.dedup_threshold,
    max_tasks: Annotated[
        int | None, option(Budgets, "max_tasks", show_default="no limit")
    ] = Budgets.max_tasks,
    max_output_tokens: Annotated[
        int | None, option(Budgets, "max_output_tokens", show_default="no limit")
    ] = Budgets.max_output_tokens,
    retry_rejected: Annotated[int, option(Budgets, "retry_rejected")] = Budgets.retry_rejected,
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
    from bonito.runs.run import TASKS_FILE, accepted_line, generate_run
    from bonito.runs.scale import cluster_option

    load_declared_task_types(model)
    if task_types_file:
        load_task_types(task_types_file)
    mix = TaskMix.parse(task_type)
    sampling = SamplingParams(
        n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    budgets = Budgets(max_tasks, max_output_tokens, retry_rejected)
    chunking = Chunking(max_context_tokens, min_context_tokens, overlap, max_input_tokens)
    reading = Reading(
        text_field, split, tuple(include or ()), tuple(exclude or ()), limit, per_document
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
        dedup,
        dedup_threshold,
    )
    if device:
        resolve_device(device)  # before the reading, not after it
    kwargs = engine_kwargs(
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
        with working(f"loading {model}"):
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
        make_chunker=lambda: _chunker(model, chunking, mix.types),
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
    table.add_row("state", state_line(state, outcome.detail))
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


def _chunker(model: str, chunking: Chunking, task_types: Sequence[TaskType] = TASK_TYPES):
    from bonito.read.chunking import Chunker

    with working(f"loading the tokenizer of {model}"):
        return Chunker.from_model(model, **asdict(chunking), task_types=task_types)


def _reading_table(title: str, summary, skipped: Path) -> Table:
    """The summary of a reading; the first skips go to stderr, all of them are in `skipped`."""
    with skipped.open(encoding="utf-8") as file:
        for record in map(json.loads, islice(file, SHOWN_SKIPS)):
            say("skipped", f"{record['source']} {record['detail']} ({record['reason']})")
    if summary.skipped.total() > SHOWN_SKIPS:
        more = summary.skipped.total() - SHOWN_SKIPS
        say("skipped", f"{more} more; see {skipped}")
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
