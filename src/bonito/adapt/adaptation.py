"""Adapting a target model to a domain, as the Bonito paper does (docs/adaptation.md):
`finetune` trains it on generated tasks with the loss on the output only, `continued_pretraining`
trains it on the passages themselves (the TAPT baseline), and `adapt` runs the whole loop into
one folder: generate, fine-tune, evaluate beside the zero-shot base (and TAPT), write the table.
Both trainings go through `bonito.train.trainer`, the trainer `bonito train` uses."""

from __future__ import annotations

import gc
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from bonito import __version__
from bonito.engines import Engine, load_engine
from bonito.errors import BonitoError
from bonito.evaluation import evaluate_model, load_examples, select_templates, target_prompt
from bonito.evaluation.evaluate import check_options
from bonito.evaluation.labelled import evaluation_task
from bonito.evaluation.metrics import metric_name
from bonito.evaluation.prompts import check_prompt_format
from bonito.generate.judge import Summary
from bonito.models import resolve_device
from bonito.publish.decontamination import Decontamination, EvaluationData, overlapping_tasks
from bonito.read.chunking import Chunker
from bonito.read.config import Reading
from bonito.read.sources import fingerprint as input_fingerprint
from bonito.runs.run import SKIPPED_FILE, Budgets, Outcome, RunConfig, generate_run, read_contexts
from bonito.runs.state import state_line
from bonito.runs.store import STORE_FILE, RunStore
from bonito.train.ctga import read_rows
from bonito.train.recipe import TARGET_RECIPE
from bonito.train.trainer import (
    CONFIG_FILE,
    SUMMARY_FILE,
    Examples,
    Recipe,
    TrainingSummary,
    as_json,
    check_config,
    fine_tune,
    fingerprint,
    load_base,
    prepare,
    read_json,
    tokenize,
    write_json,
    write_model_card,
)
from bonito.util.outputs import output_folder

MAX_STEPS = 10_000
"""The paper's cap on optimizer steps; smaller data gets one epoch."""
GENERATE, FINETUNE, TAPT, EVALUATIONS = "generate", "finetune", "tapt", "evaluations"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
ROWS = {"zero-shot": "zero-shot", TAPT: "TAPT", "bonito": "bonito"}
"""Each evaluation's name and its label in the table."""
log = logging.getLogger("bonito")


# --- fine-tuning on tasks ---------------------------------------------------------------------


def load_tasks(tasks: str | Path, split: str = "train") -> list[tuple[str, str]]:
    """(input, output) of each task in `tasks`: a run folder (its accepted tasks, in the order
    saved), or an export (a folder of `bonito export`, a JSONL/JSON/CSV/Parquet file, a saved
    dataset or a hub id; its `split`) whose rows hold `input` and `output`, an alpaca
    `instruction`, or a user and an assistant turn in `messages` (or `conversations`)."""
    rows, source = task_rows(tasks, split)
    return [task_pair(row, number, source) for number, row in enumerate(rows, 1)]


def task_rows(tasks: str | Path, split: str = "train") -> tuple[list[dict[str, Any]], str]:
    """The rows of `tasks` (see `load_tasks`) and the file or folder they were read from."""
    path = Path(tasks)
    if (path / STORE_FILE).is_file():
        store = RunStore(path / STORE_FILE, readonly=True)
        try:
            return list(store.tasks(("accepted",))), str(path)
        finally:
            store.close()
    files = [path / f"{split}.{suffix}" for suffix in ("jsonl", "parquet")]
    source = str(next((file for file in files if file.is_file()), tasks))
    return list(read_rows(source, split=split)), source


def task_pair(row: dict[str, Any], number: int, source: str | Path) -> tuple[str, str]:
    """A row of an export as (input, output); BonitoError naming the row when it holds none."""
    turns = row.get("messages") or row.get("conversations")
    if turns is not None:
        texts = [turn.get("content", turn.get("value")) for turn in turns if isinstance(turn, dict)]
        pair = tuple(texts) if len(texts) == 2 else (None, None)
    elif "instruction" in row:  # alpaca: bonito's exports leave `input` empty
        instruction = "\n\n".join(text for text in (row["instruction"], row.get("input")) if text)
        pair = (instruction, row.get("output"))
    else:
        pair = (row.get("input"), row.get("output"))
    if not all(isinstance(text, str) and text.strip() for text in pair):
        raise BonitoError(
            f"Row {number} of {source} is not a task: it needs a non-empty `input` and `output` "
            "(or an alpaca `instruction`, or a user and an assistant turn in `messages`); give a "
            "run folder or a `bonito export` of one."
        )
    given, wanted = pair
    return str(given), str(wanted)


def check_pairs(pairs: Sequence[tuple[str, str]], tasks: str | Path) -> None:
    """BonitoError when there are no tasks to train on."""
    if not pairs:
        raise BonitoError(
            f"There are no tasks to fine-tune on in {tasks}: generate more (more passages or a "
            "higher max_tasks (--max-tasks); `bonito report` shows why samples were rejected)."
        )


def task_type_counts(tasks: str | Path, split: str = "train") -> dict[str, int]:
    """How many of the tasks (see `load_tasks`) each task type has, where the rows say."""
    rows, _ = task_rows(tasks, split)
    return dict(Counter(row["task_type"] for row in rows if row.get("task_type")))


def paper_steps(recipe: Recipe, pairs: int) -> Recipe:
    """The recipe with its optimizer steps fixed, unless it has them: `epochs` passes over the
    pairs (one by default), at most 10,000 steps."""
    if recipe.max_steps is not None:
        return recipe
    steps = math.ceil(recipe.epochs * pairs / recipe.batch_size)
    return replace(recipe, max_steps=max(1, min(MAX_STEPS, steps)))


def target_examples(
    pairs: Sequence[tuple[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    prompt_format: str | None,
) -> Examples:
    """The pairs tokenized for training: each input in the target's prompt format
    (`target_prompt`, the one evaluation uses; as it is without a format) and its output the
    labelled target."""
    if prompt_format is None:
        return tokenize(pairs, tokenizer, recipe)
    prompts = ((target_prompt(text, tokenizer, prompt_format), out) for text, out in pairs)
    return tokenize(prompts, tokenizer, recipe)


def finetune(
    tasks: str | Path,
    base_model: str,
    output: str | Path,
    recipe: Recipe | None = None,
    *,
    prompt_format: str = "input-output",
    split: str = "train",
    overwrite: bool = False,
    retrain: bool = False,
) -> TrainingSummary:
    """Fine-tune `base_model` on generated tasks (see `load_tasks`) with the loss on the output
    only, by the paper's recipe unless another is given, and save the adapter (or whole model),
    tokenizer, settings and summary in `output`. The same call continues a stopped training
    from its last checkpoint, and returns the summary at once when it is finished; a training
    with other settings (other tasks, say) in `output` is refused, or with `retrain` replaced."""
    check_prompt_format(prompt_format)
    pairs = load_tasks(tasks, split)
    check_pairs(pairs, tasks)
    return train_target(
        pairs,
        base_model,
        output,
        recipe or TARGET_RECIPE,
        settings={},
        facts={"tasks": str(tasks), "task_types": task_type_counts(tasks, split)},
        prompt_format=prompt_format,
        overwrite=overwrite,
        retrain=retrain,
    )


def continued_pretraining(
    inputs: Sequence[str],
    base_model: str,
    output: str | Path,
    recipe: Recipe | None = None,
    *,
    reading: Reading | None = None,
    max_tokens: int | None = None,
    leave_out: EvaluationData | None = None,
    overwrite: bool = False,
    retrain: bool = False,
) -> TrainingSummary:
    """Continue the pretraining of `base_model` on the passages of `inputs` (read as `bonito
    generate` reads them) by next-word prediction: each piece is BOS + text + EOS with every
    token after BOS labelled, pieces cut at paragraph, sentence or word breaks to at most
    `max_tokens` tokens (default: the recipe's target limit); pieces that overlap `leave_out`
    are left out. Same recipe, saving and resuming as `finetune`; skipped passages are counted
    and listed in output/skipped.jsonl."""
    output, recipe = Path(output), recipe or TARGET_RECIPE
    max_tokens = max_tokens or recipe.max_target_tokens - 1
    output_folder(output)
    chunks, read = passage_chunks(inputs, base_model, max_tokens, output / SKIPPED_FILE, reading)
    kept = [chunk for chunk in chunks if not (leave_out and leave_out.overlaps(chunk))]
    passages = {
        "inputs": input_fingerprint(inputs),
        "documents": read.documents,
        "chunks": len(kept),
        "skipped": dict(read.skipped),
    }
    if leave_out:
        passages["overlapping"] = overlapping = len(chunks) - len(kept)
        if overlapping:
            log.warning(
                "%d of %d passage pieces share a run of %d words with %s: left out of the "
                "continued pretraining",
                *(overlapping, len(chunks), leave_out.n, leave_out.name),
            )
    return train_target(
        [("", chunk) for chunk in kept],
        base_model,
        output,
        recipe,
        settings={"chunk_tokens": max_tokens},
        facts={"passages": passages},
        prompt_format=None,
        overwrite=overwrite,
        retrain=retrain,
    )


def passage_chunks(
    inputs: Sequence[str],
    base_model: str,
    max_tokens: int,
    skipped: Path,
    reading: Reading | None = None,
) -> tuple[list[str], Summary]:
    """The texts of `inputs` cut into pieces of at most `max_tokens` tokens of the base model's
    tokenizer (however short: none is dropped for it), and the reading's counts; every skip is
    written to `skipped`."""
    chunker = Chunker.from_model(
        base_model, max_tokens=max_tokens, min_tokens=1, max_input_tokens=sys.maxsize
    )  # no prompt goes around a passage here: any length of input fits
    summary = Summary()
    contexts = read_contexts(inputs, chunker, summary, skipped, reading)
    return [context.text for context in contexts], summary


def train_target(
    pairs: Sequence[tuple[str, str]],
    base_model: str,
    output: str | Path,
    recipe: Recipe,
    *,
    settings: dict[str, Any],
    facts: dict[str, Any],
    prompt_format: str | None,
    overwrite: bool,
    retrain: bool = False,
) -> TrainingSummary:
    """Train `base_model` on the pairs (`target_examples`) with the recipe's steps fixed by
    `paper_steps`; `settings` join the training's configuration (a folder holding another is
    refused, or with `retrain` started over), `facts` its summary. A finished training with the
    same configuration is not repeated: its summary is returned."""
    output, recipe = Path(output), paper_steps(recipe, len(pairs))
    config = {
        "base_model": base_model,
        "prompt_format": prompt_format,
        **settings,
        "recipe": asdict(recipe),
        "pairs": {"count": len(pairs), "blake2b": fingerprint(pairs)},
    }
    saved = read_json(output / CONFIG_FILE)
    same = saved == as_json(config)
    if not overwrite and same and (summary := read_json(output / SUMMARY_FILE)):
        log.info("%s holds this training, finished: reused", output)
        return TrainingSummary.from_dict(summary)
    if retrain and saved is not None and not same:
        log.info("%s holds a training with other settings: starting it over", output)
        overwrite = True
    check_config(output, config, overwrite)
    model, tokenizer = load_base(base_model, recipe)
    model = prepare(model, tokenizer, recipe)
    examples = target_examples(pairs, tokenizer, recipe, prompt_format)
    description = "fine-tuning" if prompt_format else "continued pretraining"
    history = fine_tune(model, tokenizer, examples, output, recipe, description=description)
    summary = TrainingSummary(
        output=str(output),
        pairs={"train": len(examples.items), "skipped": dict(examples.skipped)},
        train_tokens=examples.tokens,
        **history,
        facts=facts,
    )
    write_json(output / SUMMARY_FILE, summary.to_dict())
    target_card(output, base_model, recipe, summary.to_dict(), prompt_format)
    return summary


def target_card(
    output: Path,
    base_model: str,
    recipe: Recipe,
    summary: dict[str, Any],
    prompt_format: str | None,
) -> None:
    """The model card of a target model trained on tasks (or, without a prompt format, on
    passages): what it is, the data, and how `bonito evaluate` scores it."""
    trained = summary["pairs"]["train"]
    skipped = json.dumps(summary["pairs"]["skipped"]) if summary["pairs"]["skipped"] else "none"
    if prompt_format is None:
        passages = summary["passages"]
        about = (
            f"`{base_model}` continued-pretrained on passages of a domain by next-word prediction "
            "(the TAPT baseline of the Bonito paper), by `bonito adapt --baseline tapt`."
        )
        pieces = f"{trained} passage pieces from {passages['documents']} documents"
        data = [f"{pieces}; skipped {skipped}."]
    else:
        about = (
            f"`{base_model}` adapted to a domain as the Bonito paper does: fine-tuned by `bonito "
            "finetune` on instruction-tuning tasks a bonito generator wrote from the domain's "
            f"unannotated passages, each input in the {prompt_format} prompt format and the "
            "loss on the output only."
        )
        kinds = sorted(summary.get("task_types", {}).items(), key=lambda k: (-k[1], k[0]))
        data = [
            f"{trained} tasks from `{summary['tasks']}`; skipped {skipped}.",
            *(["", "| task type | tasks |", "|---|---:|"] if kinds else []),
            *(f"| {name} | {count} |" for name, count in kinds),
        ]
    model = f"{base_model} --adapter {output}" if recipe.lora_r is not None else str(output)
    use = (
        f"bonito evaluate --model {model} --data LABELLED.jsonl -t TASK_TYPE "
        f"--prompt-format {prompt_format or 'input-output'}"
    )
    write_model_card(output, base_model, recipe, summary, about=about, data=data, use=use)


# --- the adapt loop ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """The labelled data the models are compared on, and how (`evaluate_model`'s options)."""

    data: str
    task_type: str
    data_format: str = "labelled"
    templates: str = "all"
    limit: int | None = None
    batch_size: int = 8
    device: str | None = None

    def check(self, prompt_format: str) -> None:
        """Fail now on what would fail the evaluations after the trainings."""
        check_options(prompt_format, self.batch_size)
        resolve_device(self.device)
        self.settings()  # the task type and templates
        load_examples(self.data, evaluation_task(self.task_type), self.data_format, self.limit)

    def evaluation_data(self) -> EvaluationData:
        """The texts of the examples evaluated on, for decontamination."""
        task = evaluation_task(self.task_type)
        examples = load_examples(self.data, task, self.data_format, self.limit)
        texts = (
            text
            for example in examples
            for text in (example.context, example.question, *example.choices, *example.answers)
        )
        return EvaluationData(texts, Path(self.data).name)

    def settings(self) -> dict[str, Any]:
        """What decides the scores (batch size and device do not)."""
        return {
            "data": input_fingerprint([self.data])[0],
            "data_format": self.data_format,
            "task_type": evaluation_task(self.task_type),
            "templates": [t.name for t in select_templates(self.task_type, self.templates)],
            "limit": self.limit,
        }


def adapt(
    output: str | Path,
    generation: RunConfig,
    benchmark: Benchmark,
    base_model: str,
    *,
    engine: str = "transformers",
    engine_options: dict[str, Any] | None = None,
    budgets: Budgets | None = None,
    recipe: Recipe | None = None,
    prompt_format: str = "input-output",
    baseline: str | None = None,
    keep_contaminated: bool = False,
    overwrite: bool = False,
) -> AdaptResult:
    """The paper's loop in the folder `output`: generate tasks from the passages with the
    generator (a run in generate/), fine-tune `base_model` on them (finetune/), with baseline
    "tapt" continue its pretraining on the same passages (tapt/), evaluate the zero-shot base and
    each adapted copy (evaluations/), and write the table (results.json, results.md). Tasks and
    passage pieces that overlap the labelled data are left out of the trainings, unless
    `keep_contaminated`. A finished stage with the same settings is reused, a stopped one
    continues, and a training or evaluation whose settings or data changed (more tasks after a
    larger budget, another option) is made again. Returns the table."""
    output, recipe, budgets = Path(output), recipe or TARGET_RECIPE, budgets or Budgets()
    if baseline not in (None, TAPT):
        raise BonitoError(f"Unknown baseline '{baseline}'; use tapt, or no baseline.")
    benchmark.check(prompt_format)
    labelled = benchmark.evaluation_data()
    output_folder(output)

    def load() -> Engine:
        return load_engine(generation.model, engine, **(engine_options or {}))

    run = generate_run(
        output / GENERATE,
        generation,
        load,
        budgets=budgets,
        overwrite=overwrite,
        engine_name=engine,
    )
    state = state_line(run.state, run.detail)
    log.info("%s: %d accepted tasks (%s)", output / GENERATE, run.summary.accepted, state)
    if run.error:
        log.warning("%s: %s", output / GENERATE, run.error)
    release()
    pairs, decontamination = decontaminated_pairs(output / GENERATE, labelled, keep_contaminated)
    trainings = {}
    trainings["bonito"] = train_target(
        pairs,
        base_model,
        output / FINETUNE,
        recipe,
        settings={},
        facts={"tasks": str(output / GENERATE)},
        prompt_format=prompt_format,
        overwrite=overwrite,
        retrain=True,
    )
    release()
    adapters: dict[str, Path | None] = {"zero-shot": None}
    if baseline == TAPT:
        trainings[TAPT] = continued_pretraining(
            generation.inputs,
            base_model,
            output / TAPT,
            recipe,
            reading=generation.reading,
            leave_out=None if keep_contaminated else labelled,
            overwrite=overwrite,
            retrain=True,
        )
        release()
        adapters[TAPT] = output / TAPT
    adapters["bonito"] = output / FINETUNE
    evaluations = {}
    for name, adapter in adapters.items():
        path = output / EVALUATIONS / f"{name}.json"
        evaluations[name] = evaluation(
            path, base_model, adapter, benchmark, prompt_format, overwrite
        )
        release()
    settings = {
        "base_model": base_model,
        "generator": generation.model,
        "task_type": evaluation_task(benchmark.task_type),
        "prompt_format": prompt_format,
        "baseline": baseline,
        "generation": generation_facts(generation, run, engine, budgets),
        "decontamination": decontamination_facts(decontamination, trainings),
        "trainings": {
            name: {"pairs": summary.pairs, "steps": summary.steps}
            for name, summary in trainings.items()
        },
        "recipe": asdict(recipe),
        "seeds": {"generation": generation.seed, "training": recipe.seed},
        "evaluation": benchmark.settings(),
        "bonito": __version__,
    }
    table = results_table(evaluations, settings)
    write_json(output / RESULTS_JSON, asdict(table))
    (output / RESULTS_MD).write_text(results_markdown(table), encoding="utf-8")
    return table


def decontaminated_pairs(
    run: Path, labelled: EvaluationData, keep: bool
) -> tuple[list[tuple[str, str]], Decontamination]:
    """(input, output) of the run's accepted tasks, less those that overlap the labelled data
    unless `keep`, and what overlapped (a warning when anything did)."""
    store = RunStore(run / STORE_FILE, readonly=True)
    try:
        tasks = list(store.tasks(("accepted",)))
    finally:
        store.close()
    overlapping, found = overlapping_tasks(tasks, labelled, left_out=not keep)
    if found.overlapping_tasks:
        log.warning("%s", found.sentence())
    pairs = [(t["input"], t["output"]) for t in tasks if keep or t["id"] not in overlapping]
    if tasks and not pairs:
        raise BonitoError(
            f"No task is left to fine-tune on: {found.sentence()} Give passages other than the "
            "evaluation data, or pass keep_contaminated=True (--keep-contaminated) to train on "
            "them anyway."
        )
    check_pairs(pairs, run)
    return pairs, found


def decontamination_facts(
    found: Decontamination, trainings: dict[str, TrainingSummary]
) -> dict[str, Any]:
    """What overlapped the labelled data: tasks and passages, and TAPT's passage pieces."""
    facts = found.to_dict()
    passages = trainings[TAPT].facts.get("passages", {}) if TAPT in trainings else {}
    if "overlapping" in passages:
        pieces = passages["chunks"] + passages["overlapping"]
        facts["tapt_pieces"] = {"pieces": pieces, "overlapping": passages["overlapping"]}
    return facts


def generation_facts(
    generation: RunConfig, run: Outcome, engine: str, budgets: Budgets
) -> dict[str, Any]:
    """How the tasks were made, and how many: the passages (sizes and hashes), engine,
    sampling, chunking, budgets, the run's state and counts."""
    summary = run.summary
    return {
        "passages": input_fingerprint(generation.inputs),
        "engine": engine,
        "sampling": generation.sampling.to_dict(),
        "chunking": asdict(generation.chunking),
        "budgets": asdict(budgets),
        "state": state_line(run.state, run.detail),
        "samples": summary.samples,
        "accepted": summary.accepted,
        "duplicates": summary.duplicates,
        "rejected": dict(summary.rejected),
        "failed_requests": summary.failed,
    }


def evaluation(
    path: Path,
    base_model: str,
    adapter: Path | None,
    benchmark: Benchmark,
    prompt_format: str,
    overwrite: bool,
) -> dict[str, Any]:
    """The evaluation of the base model (with the adapter) saved in `path`, made again only when
    it is missing or was made with other settings (the adapter's training settings included)."""
    settings = as_json(
        {
            "model": base_model,
            "training": read_json(adapter / CONFIG_FILE) if adapter else None,
            "prompt_format": prompt_format,
            **benchmark.settings(),
        }
    )
    saved = None if overwrite else read_json(path)
    if saved and saved.get("settings") == settings:
        log.info("%s holds this evaluation: reused", path)
        return saved
    result = evaluate_model(
        base_model,
        benchmark.data,
        benchmark.task_type,
        adapter=adapter,
        data_format=benchmark.data_format,
        templates=benchmark.templates,
        prompt_format=prompt_format,
        batch_size=benchmark.batch_size,
        limit=benchmark.limit,
        device=benchmark.device,
    )
    record = {"settings": settings, **result.to_dict()}
    write_json(path, record)
    return record


@dataclass(frozen=True)
class ResultRow:
    """One evaluated model of the table: its scores, the mean over the templates."""

    name: str
    label: str
    scores: dict[str, float]
    evaluation: str
    """The file with every template's scores and predictions, in the output folder."""


@dataclass(frozen=True)
class AdaptResult:
    """The table `adapt` makes (results.json holds it as JSON): one row per evaluated model
    (zero-shot, TAPT, bonito), and the settings that made them."""

    task_type: str
    examples: int
    templates: list[str]
    metrics: list[str]
    rows: list[ResultRow]
    settings: dict[str, Any]


def results_table(evaluations: dict[str, dict[str, Any]], settings: dict[str, Any]) -> AdaptResult:
    """The table: one row per evaluation with its scores averaged over the templates."""
    first = next(iter(evaluations.values()))
    return AdaptResult(
        task_type=first["task_type"],
        examples=first["examples"],
        templates=[t["template"] for t in first["templates"]],
        metrics=list(first["average"]),
        rows=[
            ResultRow(name, ROWS[name], record["average"], f"{EVALUATIONS}/{name}.json")
            for name, record in evaluations.items()
        ],
        settings=settings,
    )


def results_markdown(table: AdaptResult) -> str:
    """The table as Markdown: scores in percent, then the settings."""
    settings, metrics = table.settings, table.metrics
    names = [metric_name(metric) for metric in metrics]
    lines = [
        f"# {settings['base_model']} adapted with bonito ({table.task_type})",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(metrics),
        *(
            f"| {row.label} | "
            + " | ".join(f"{100 * row.scores[metric]:.1f}" for metric in metrics)
            + " |"
            for row in table.rows
        ),
        "",
        f"Percentages on {table.examples} examples, each the mean over the prompt templates "
        f"{', '.join(table.templates)}; every template's scores and predictions are in "
        f"{EVALUATIONS}/<model>.json.",
        "",
        *decontamination_lines(settings["decontamination"]),
        "## Settings",
        "",
        *setting_lines(settings),
        "",
    ]
    return "\n".join(lines)


def decontamination_lines(facts: dict[str, Any]) -> list[str]:
    """What decontamination did, in words."""
    found = Decontamination(**{k: v for k, v in facts.items() if k != "tapt_pieces"})
    line = f"Decontamination: {found.sentence()}"
    if "tapt_pieces" in facts:
        pieces = facts["tapt_pieces"]
        line += (
            f" {pieces['overlapping']} of the {pieces['pieces']} passage pieces of the continued "
            "pretraining overlapped too and were left out."
        )
    return [line, ""]


def setting_lines(settings: dict[str, Any], indent: str = "") -> list[str]:
    """Settings as a Markdown list, nested for nested ones."""
    lines = []
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            lines += [f"{indent}- {key}:", *setting_lines(value, indent + "  ")]
        else:
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            lines.append(f"{indent}- {key}: {shown}")
    return lines


# --- small helpers ----------------------------------------------------------------------------


def release() -> None:
    """Free the memory the last stage's models held before the next stage loads its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
