"""`bonito evaluate`, `finetune` and `adapt`: target models on generated tasks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bonito.cli.common import (
    DEFAULT_DEVICE,
    RECIPE_OPTIONS,
    DataFormat,
    EvalLimit,
    Full,
    MaxContextTokens,
    MinContextTokens,
    PromptFormat,
    Samples,
    Split,
    Temperature,
    Templates,
    TextField,
    console,
    engine_kwargs,
    recipe_options,
    stdout,
    training_table,
)
from bonito.models import DEFAULT_GENERATOR
from bonito.prompt.sampling import SamplingParams
from bonito.read.config import Chunking, Reading
from bonito.train.recipe import TARGET_RECIPE, Recipe


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


@recipe_options(
    *(name for name in RECIPE_OPTIONS if name != "eval_steps"),
    max_steps=Annotated[
        int | None,
        typer.Option(help="Optimizer steps.", show_default="--epochs passes, at most 10,000"),
    ],
)
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
    recipe: Recipe = TARGET_RECIPE,
    full: Full = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start over, dropping the checkpoints in OUTPUT.")
    ] = False,
) -> None:
    """Fine-tune a target model on generated tasks, the loss on the output only, with the
    paper's recipe (Q-LoRA on CUDA, LoRA on CPU, alpha 16; one epoch, at most 10,000 steps). The
    same command again resumes from the last checkpoint; `bonito evaluate --adapter OUTPUT`
    scores the result."""
    from bonito.adapt.adaptation import finetune as finetune_tasks

    if full:
        recipe = replace(recipe, lora_r=None)
    summary = finetune_tasks(
        tasks,
        base_model,
        output,
        recipe,
        prompt_format=prompt_format,
        split=split,
        overwrite=overwrite,
    )
    trained = f"{summary.pairs['train']} tasks from {tasks}"
    stdout.print(training_table(f"bonito finetune -> {output}", summary, trained))


@recipe_options(
    "lora_r",
    "lora_alpha",
    "quantize",
    "learning_rate",
    "max_steps",
    "batch_size",
    "micro_batch_size",
    "save_steps",
    "logging_steps",
    "seed",
    max_steps=Annotated[
        int | None,
        typer.Option(
            help="Optimizer steps of the fine-tuning.", show_default="1 epoch, at most 10,000"
        ),
    ],
    seed=Annotated[int, typer.Option(help="Seed of the generation and the trainings.")],
)
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
        DEFAULT_GENERATOR
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
    text_field: TextField = Reading.text_field,
    split: Split = Reading.split,
    max_context_tokens: MaxContextTokens = Chunking.max_tokens,
    min_context_tokens: MinContextTokens = Chunking.min_tokens,
    n: Samples = SamplingParams.n,
    temperature: Temperature = SamplingParams.temperature,
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
    recipe: Recipe = TARGET_RECIPE,
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

    mix = TaskMix.parse([task_type])
    generation = RunConfig(
        generator,
        tuple(unlabelled),
        mix,
        mix.check_per_context(None),
        SamplingParams(n=n, temperature=temperature, seed=recipe.seed),
        Reading(text_field, split),
        Chunking(max_context_tokens, min_context_tokens),
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
        engine_options=engine_kwargs(None, device=device),
        budgets=Budgets(max_tasks),
        recipe=recipe,
        prompt_format=prompt_format,
        baseline=baseline,
        keep_contaminated=keep_contaminated,
        overwrite=overwrite,
    )
    metrics = table.metrics
    title = f"bonito adapt ({table.examples} examples, %, mean of the templates)"
    shown = Table("model", *(metric_name(m) for m in metrics), title=title)
    for row in table.rows:
        shown.add_row(row.label, *(f"{100 * row.scores[m]:.1f}" for m in metrics))
    stdout.print(shown)
    console.print(f"table and settings written to {output / RESULTS_MD}")
