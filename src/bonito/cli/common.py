"""What the command groups share: the consoles, option types, and small helpers."""

from __future__ import annotations

import functools
import inspect
import json
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast, get_type_hints

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bonito.errors import BonitoError
from bonito.generate.judge import counts
from bonito.prompt.sampling import SamplingParams
from bonito.read.config import Chunking, Reading
from bonito.train.recipe import Recipe

if TYPE_CHECKING:
    from bonito.train.trainer import TrainingSummary

Command = TypeVar("Command", bound=Callable[..., Any])

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


def option(settings: type, name: str, *flags: str, **options: Any) -> Any:
    """A typer option for the library's setting `name`, with the help its dataclass field
    gives; the command takes the default from the dataclass too (`= Settings.name`)."""
    (help_text,) = (f.metadata["help"] for f in fields(settings) if f.name == name)
    return typer.Option(*flags, help=help_text, **options)


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
TextField = Annotated[str, option(Reading, "text_field", "--text-field", "--context-col")]
Split = Annotated[str, option(Reading, "split")]
RunFolder = Annotated[Path, typer.Argument(metavar="RUN", help="Run folder.")]
Include = Annotated[list[str] | None, option(Reading, "include", metavar="GLOB")]
Exclude = Annotated[list[str] | None, option(Reading, "exclude", metavar="GLOB")]
MaxContextTokens = Annotated[int, option(Chunking, "max_tokens", "--max-context-tokens")]
MinContextTokens = Annotated[int, option(Chunking, "min_tokens", "--min-context-tokens")]
Overlap = Annotated[int, option(Chunking, "overlap")]
MaxInputTokens = Annotated[int, option(Chunking, "max_input_tokens")]
Limit = Annotated[int | None, option(Reading, "limit", show_default="all")]
PerDocument = Annotated[
    int | None, option(Reading, "per_document", metavar="K", show_default="all")
]
Samples = Annotated[int, option(SamplingParams, "n", "--n", "-n")]
Temperature = Annotated[float, option(SamplingParams, "temperature")]
Strict = Annotated[bool, typer.Option(help="Fail when any input or part of one is skipped.")]


Full = Annotated[bool, typer.Option(help="Train every weight instead of LoRA adapters.")]
RECIPE_SHOWN = {
    "quantize": "on with CUDA for LoRA, else off",
    "max_steps": "none",
    "optimizer": "paged_adamw_32bit on CUDA with bitsandbytes, else adamw_torch",
}
"""What --help shows as the default of a recipe option whose default the recipe works out."""
RECIPE_OPTIONS: dict[str, Any] = {
    name: Annotated[kind, option(Recipe, name, show_default=RECIPE_SHOWN.get(name, True))]
    for name, kind in get_type_hints(Recipe).items()
}
"""One option per recipe field, typed and in order as `Recipe` declares them."""


def recipe_options(*names: str, **worded: Any) -> Callable[[Command], Command]:
    """Stand a command's `recipe: Recipe = DEFAULTS` parameter for one option per recipe field
    (`names`, or all of them), each defaulting to DEFAULTS' value; `worded` gives an option its
    own annotation where the command says more. The command receives the recipe they make."""

    def add(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        defaults = signature.parameters["recipe"].default
        chosen = names or tuple(RECIPE_OPTIONS)
        options = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=getattr(defaults, name),
                annotation=worded.get(name, RECIPE_OPTIONS[name]),
            )
            for name in chosen
        ]
        parameters = []
        for parameter in signature.parameters.values():
            parameters += options if parameter.name == "recipe" else [parameter]

        @functools.wraps(command)
        def with_recipe(**given: Any) -> Any:
            recipe = replace(defaults, **{name: given.pop(name) for name in chosen})
            return command(**given, recipe=recipe)

        with_recipe.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return cast(Command, with_recipe)

    return add


def training_table(title: str, summary: TrainingSummary, pairs: str) -> Table:
    """A training's summary: its pairs, those skipped, steps, loss and speed."""
    table = Table(title=title, show_header=False)
    table.add_row("pairs", pairs)
    table.add_row("skipped", counts(Counter(summary.pairs["skipped"])) or "0")
    table.add_row("steps", str(summary.steps))
    if summary.train_loss:
        first, last = summary.train_loss[0][1], summary.train_loss[-1][1]
        table.add_row("train loss", f"{first:.4f} -> {last:.4f}")
    if summary.tokens_per_second:
        table.add_row("tokens/s", f"{summary.tokens_per_second:,.0f}")
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
