"""One typed configuration: the library's dataclasses hold each default and its help, and the
command line's options take both from them (so `--help` shows a changed default)."""

from dataclasses import MISSING, fields, replace

import pytest
import typer

from bonito.cli import app
from bonito.errors import BonitoError
from bonito.generate.mix import TaskMix
from bonito.prompt.sampling import SamplingParams
from bonito.read.config import Chunking, Reading
from bonito.runs.run import Budgets, RunConfig
from bonito.train.recipe import TARGET_RECIPE, Recipe

RECIPE = [f.name for f in fields(Recipe)]
ADAPT_RECIPE = ["lora_r", "lora_alpha", "quantize", "learning_rate", "max_steps", "batch_size"]
ADAPT_RECIPE += ["micro_batch_size", "save_steps", "logging_steps", "seed"]
CONTEXTS = {"max_context_tokens": "max_tokens", "min_context_tokens": "min_tokens"}
OPTIONS = {
    # command: [(the settings its options stand for, {option's parameter: setting's field})]
    "chunk": [
        (Chunking, {n: n for n in ("max_tokens", "min_tokens", "overlap", "max_input_tokens")}),
        (Reading, {n: n for n in ("text_field", "split", "limit", "per_document")}),
    ],
    "generate": [
        (SamplingParams, {n: n for n in ("n", "temperature", "top_p", "max_tokens")}),
        (Reading, {n: n for n in ("text_field", "split", "limit", "per_document")}),
        (Chunking, CONTEXTS | {"overlap": "overlap", "max_input_tokens": "max_input_tokens"}),
        (RunConfig, {n: n for n in ("checks", "dedup", "dedup_threshold")}),
        (Budgets, {n: n for n in ("max_tasks", "max_output_tokens", "retry_rejected")}),
    ],
    "train": [(Recipe(), {n: n for n in RECIPE if n != "lora_r"} | {"lora_r": "lora_r"})],
    "finetune": [(TARGET_RECIPE, {n: n for n in RECIPE if n != "eval_steps"})],
    "adapt": [
        (TARGET_RECIPE, {n: n for n in ADAPT_RECIPE}),
        (SamplingParams, {"n": "n", "temperature": "temperature"}),
        (Reading, {"text_field": "text_field", "split": "split"}),
        (Chunking, CONTEXTS),
    ],
}
OWN_HELP = {("train", "seed"), ("adapt", "seed"), ("finetune", "max_steps"), ("adapt", "max_steps")}
"""Options that say more than their setting's help: what else the seed seeds, the paper's cap on
the fine-tuning's steps."""


def default_of(settings, name: str):
    """A field's default: an instance's value, or the class's declared default."""
    if not isinstance(settings, type):
        return getattr(settings, name)
    (field,) = (f for f in fields(settings) if f.name == name)
    assert field.default is not MISSING
    return field.default


def help_of(settings, name: str) -> str:
    (field,) = (f for f in fields(settings) if f.name == name)
    return field.metadata["help"]


COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
CASES = [
    (command, settings, parameter, name)
    for command, groups in OPTIONS.items()
    for settings, names in groups
    for parameter, name in names.items()
]


@pytest.mark.parametrize(("command", "settings", "parameter", "name"), CASES)
def test_every_cli_default_and_help_is_the_library_setting(command, settings, parameter, name):
    params = {param.name: param for param in COMMANDS[command].params}
    option = params[parameter]
    assert option.default == default_of(settings, name), (command, parameter)
    if (command, parameter) not in OWN_HELP:
        assert option.help == help_of(settings, name), (command, parameter)


def test_a_changed_default_shows_in_help(monkeypatch):
    """What --help shows is the parameter's default, which the command read from the library."""
    from typer.testing import CliRunner

    shown = CliRunner().invoke(app, ["finetune", "--help"], terminal_width=200).output
    alpha = next(line for line in shown.splitlines() if "--lora-alpha" in line)
    assert f"[default: {TARGET_RECIPE.lora_alpha}]" in alpha
    assert TARGET_RECIPE.lora_alpha != Recipe().lora_alpha  # the paper's, not bonito-v1's


def test_every_setting_has_help():
    for settings in (Reading, Chunking, SamplingParams, Budgets, RunConfig, Recipe):
        for field in fields(settings):
            if settings is not RunConfig or field.name in {"checks", "dedup", "dedup_threshold"}:
                assert field.metadata.get("help"), (settings.__name__, field.name)


def test_dedup_defaults_to_near_or_off_without_checks(tmp_path):
    """The rule is the library's: a Python caller turning checks off gets the original's
    output, as `bonito generate --no-checks` does."""
    passages = tmp_path / "p.txt"
    passages.write_text("A passage.\n")
    mix = TaskMix.parse(["ynqa"])

    def config(**options) -> RunConfig:
        return RunConfig("m", (str(passages),), mix, 1, SamplingParams(), **options)

    assert config().dedup == "near"
    assert config(checks=False).dedup == "off"
    assert config(checks=False, dedup="exact").dedup == "exact"
    with pytest.raises(BonitoError, match=r"dedup \(--dedup\) must be near, exact or off"):
        config(dedup="fuzzy")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (lambda: Reading(limit=0), r"^limit \(--limit\) must be at least 1, got 0\.$"),
        (lambda: Chunking(max_tokens=0), r"^max_tokens \(--max-context-tokens\) must be"),
        (lambda: Budgets(max_tasks=0), r"^max_tasks \(--max-tasks\) must be at least 1"),
        (lambda: Budgets(retry_rejected=-1), r"^retry_rejected \(--retry-rejected\) must be"),
    ],
)
def test_settings_refuse_bad_values_naming_the_setting_and_its_option(settings, message):
    with pytest.raises(BonitoError, match=message):
        settings()


class Reached(Exception):
    """Raised by a stand-in for the library call, carrying what the command passed it."""


def caught(*args, **kwargs):
    raise Reached(args, kwargs)


def recipe_passed(result) -> Recipe:
    args, kwargs = result.exception.args
    (recipe,) = [value for value in [*args, *kwargs.values()] if isinstance(value, Recipe)]
    return recipe


@pytest.mark.parametrize(
    ("command", "library", "defaults"),
    [
        (
            ["train", "--data", "p", "--base-model", "m"],
            "train.generator.train_generator",
            Recipe(),
        ),
        (["finetune", "run", "--base-model", "m"], "adapt.adaptation.finetune", TARGET_RECIPE),
    ],
)
def test_recipe_options_reach_the_library_over_the_command_defaults(
    monkeypatch, tmp_path, command, library, defaults
):
    from typer.testing import CliRunner

    monkeypatch.setattr(f"bonito.{library}", caught)
    monkeypatch.setattr("bonito.train.ctga.load_pairs", lambda data, split: [])
    args = [*command, "-o", str(tmp_path), "--learning-rate", "0.5", "--seed", "7"]
    given = recipe_passed(CliRunner().invoke(app, args))
    assert given == replace(defaults, learning_rate=0.5, seed=7)
    assert recipe_passed(CliRunner().invoke(app, [*args, "--full"])).lora_r is None


def test_adapt_seeds_the_generation_and_the_training_alike(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    monkeypatch.setattr("bonito.adapt.adaptation.adapt", caught)
    (tmp_path / "p.txt").write_text("A passage.\n")
    args = ["adapt", "--unlabelled", str(tmp_path / "p.txt"), "--labelled", "l.jsonl"]
    args += ["-t", "ynqa", "--base-model", "m", "-o", str(tmp_path), "--seed", "7", "--lora-r", "8"]
    result = CliRunner().invoke(app, args)
    assert recipe_passed(result) == replace(TARGET_RECIPE, lora_r=8, seed=7)
    (_, generation, *_), _ = result.exception.args
    assert generation.sampling.seed == 7
