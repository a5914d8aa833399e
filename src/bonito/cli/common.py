"""What the command groups share: the consoles, option types, and small helpers."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bonito.errors import BonitoError
from bonito.generate.judge import counts

APP_SETTINGS: dict[str, Any] = dict(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: no markup in help texts, no truncated names
    context_settings={"help_option_names": ["-h", "--help"]},
)
# what bonito prints is text, never Rich markup: file names and hints keep their [brackets]
console = Console(stderr=True, markup=False, emoji=False, highlight=False)
stdout = Console(markup=False, emoji=False)
INTERRUPTED = 128 + signal.SIGINT
"""The exit status after Ctrl-C, the shell's convention (typer's too)."""

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


def recipe_from(options: dict[str, Any]):
    """The training recipe from a command's parameters (its `locals()`): those named like
    Recipe's fields, the rest at Recipe's defaults; --full trains every weight (no LoRA)."""
    from dataclasses import fields

    from bonito.train.trainer import Recipe

    values = {f.name: options[f.name] for f in fields(Recipe) if f.name in options}
    return Recipe(**values | ({"lora_r": None} if options.get("full") else {}))


def training_table(title: str, summary: dict[str, Any], pairs: str) -> Table:
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


def engine_kwargs(pairs: list[str] | None, **options: Any) -> dict[str, Any]:
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


def working(message: str):
    """A spinner on stderr while something slow runs."""
    return console.status(Text(message))


def say(label: str, message: str, style: str = "yellow") -> None:
    """One line on stderr: a coloured label, then the message as it is."""
    console.print(Text.assemble((label, style), " ", message), soft_wrap=True)
