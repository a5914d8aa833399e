"""`bonito tiny-model`, `ctga build` and `train`: making generators."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bonito.cli.common import (
    APP_SETTINGS,
    Full,
    Split,
    TaskTypesFile,
    console,
    recipe_options,
    stdout,
    training_table,
    working,
)
from bonito.errors import BonitoError
from bonito.generate.judge import counts
from bonito.prompt.task_types import load_task_types
from bonito.train.recipe import GENERATOR_RECIPE, Recipe


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
    with working("training the tiny generator (about two minutes)"):
        build_tiny_model(path, seed=seed, overwrite=overwrite)
    console.print(f"tiny bonito model written to {path} in {time.perf_counter() - started:.1f}s")


ctga_app = typer.Typer(
    help="ctga: bonito training pairs from promptsource templates (see docs/ctga.md).",
    **APP_SETTINGS,
)


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
    with working("building ctga pairs"):
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


@recipe_options(
    seed=Annotated[int, typer.Option(help="Seed of the split, order and initialisation.")]
)
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
    recipe: Recipe = GENERATOR_RECIPE,
    full: Full = False,
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

    if full:
        recipe = replace(recipe, lora_r=None)
    if task_types_file:
        load_task_types(task_types_file)
    with working(f"reading {data}"):
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
    counted = summary.pairs
    pairs_line = f"{counted['train']} train, {counted['held_out']} held out"
    table = training_table(f"bonito train -> {output}", summary, pairs_line)
    if summary.eval_loss:
        first, last = summary.eval_loss[0][1], summary.eval_loss[-1][1]
        table.add_row("held-out loss", f"{first:.4f} -> {last:.4f}")
    if summary.generations:
        scores = summary.generations["all"]
        table.add_row("held-out parse", f"{scores['parse_rate']:.0%}")
        table.add_row("passage in instruction", f"{scores['placeholder_rate']:.0%}")
    stdout.print(table)
