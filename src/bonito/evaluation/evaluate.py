"""Evaluating a target model on labelled examples: each template's prompts in the target's prompt
format, its answers (ranked classification or greedy generation), scores per template and their
mean, as the paper reports them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import fmean
from typing import cast

import torch
from transformers import PreTrainedTokenizerBase

from bonito.errors import BonitoError
from bonito.evaluation.labelled import Example, evaluation_task, load_examples
from bonito.evaluation.metrics import classification_scores, squad_scores
from bonito.evaluation.prompts import answer_ids, check_prompt_format, prompt_ids, target_prompt
from bonito.evaluation.scoring import best_choice, generate_greedy, score_choices
from bonito.evaluation.templates import Template, select_templates
from bonito.runs.run import bar
from bonito.util.outputs import output_file, writable

MAX_ANSWER_TOKENS = 25
"""Longest generated extractive answer, in tokens (the paper's setting)."""


@dataclass(frozen=True)
class TemplateResult:
    """One template's scores and its prediction for each example (in the order of `ids`)."""

    template: str
    scores: dict[str, float]
    predictions: list[str]


@dataclass(frozen=True)
class Evaluation:
    """Scores per template and their mean (fractions in [0, 1]); JSON-ready with `to_dict`."""

    task_type: str
    prompt_format: str
    examples: int
    average: dict[str, float]
    templates: list[TemplateResult]
    ids: list[str]
    model: str | None = None
    adapter: str | None = None
    data: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the evaluation as JSON, creating the folder it goes in."""
        name = "path (--output)"
        path = output_file(path, name)
        with writable(path, name):
            path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")


def check_options(prompt_format: str, batch_size: int) -> None:
    """Options wrong before any model is loaded."""
    check_prompt_format(prompt_format)
    if batch_size < 1:
        raise BonitoError(f"The batch size must be at least 1, got {batch_size}.")


def first_line(text: str) -> str:
    """A generated answer: the first line of the text, without surrounding spaces."""
    return text.strip().partition("\n")[0].strip()


def evaluate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    task_type: str,
    templates: Sequence[Template] | None = None,
    prompt_format: str = "input-output",
    batch_size: int = 8,
) -> Evaluation:
    """Score `model` on `examples` with each template (default: all of the task type's): ynqa and
    nli by ranked classification (accuracy, macro-F1), exqa by greedy generation of at most 25
    tokens (SQuAD exact match, F1)."""
    task = evaluation_task(task_type)
    check_options(prompt_format, batch_size)
    templates = templates or select_templates(task)
    answer = extract if task == "exqa" else classify
    results = []
    with bar(total=len(examples) * len(templates), desc="evaluating", unit=" prompts") as shown:
        for template in templates:
            prompts = [
                prompt_ids(target_prompt(template.render(e), tokenizer, prompt_format), tokenizer)
                for e in examples
            ]
            predicted, scores = answer(
                model, tokenizer, examples, prompts, batch_size=batch_size, progress=shown.update
            )
            results.append(TemplateResult(template.name, scores, predicted))
    average = {name: fmean(r.scores[name] for r in results) for name in results[0].scores}
    ids = [e.id for e in examples]
    return Evaluation(task, prompt_format, len(examples), average, results, ids)


def classify(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    prompts: list[list[int]],
    **options,
) -> tuple[list[str], dict[str, float]]:
    """The best-scoring choice of each example, and accuracy and macro-F1 over the choices."""
    choices = [[answer_ids(c, tokenizer) for c in e.choices] for e in examples]
    logprobs = score_choices(model, prompts, choices, pad_id=_pad_id(tokenizer), **options)
    predicted = [e.choices[best_choice(s)] for e, s in zip(examples, logprobs, strict=True)]
    gold = [e.choices[cast(int, e.label)] for e in examples]  # labelled: every example has one
    return predicted, classification_scores(gold, predicted)


def extract(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    prompts: list[list[int]],
    **options,
) -> tuple[list[str], dict[str, float]]:
    """The greedy answer to each example, and SQuAD exact match and F1 against the gold ones."""
    outputs = generate_greedy(
        model, prompts, pad_id=_pad_id(tokenizer), max_new_tokens=MAX_ANSWER_TOKENS, **options
    )
    predicted = [first_line(tokenizer.decode(o, skip_special_tokens=True)) for o in outputs]
    return predicted, squad_scores(predicted, [e.answers for e in examples])


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def load_target(model: str, adapter: str | Path | None = None, device: str | None = None):
    """Tokenizer and model from a local folder or hub id, in eval mode on `device` (default: CUDA
    when there is one). An adapter (a PEFT folder, as `bonito finetune` saves it) is merged in."""
    from bonito.engines.transformers import load_model

    return load_model(model, device, adapter=str(adapter) if adapter else None)


def evaluate_model(
    model: str,
    data: str | Path,
    task_type: str,
    *,
    adapter: str | Path | None = None,
    data_format: str = "labelled",
    templates: str | None = None,
    prompt_format: str = "input-output",
    batch_size: int = 8,
    limit: int | None = None,
    device: str | None = None,
) -> Evaluation:
    """Load the labelled data (the first `limit` examples), the templates `templates` names (see
    `select_templates`) and the model, then `evaluate`."""
    task = evaluation_task(task_type)
    check_options(prompt_format, batch_size)
    examples = load_examples(data, task, data_format, limit)
    chosen = select_templates(task, templates)
    tokenizer, lm = load_target(model, adapter, device)
    result = evaluate(lm, tokenizer, examples, task, chosen, prompt_format, batch_size)
    return replace(result, model=model, adapter=str(adapter) if adapter else None, data=str(data))
