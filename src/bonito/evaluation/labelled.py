"""Labelled evaluation data: the JSON Lines schema (docs/evaluation.md), read and checked line by
line into `Example`s, directly or through a converter from a labelled set's own format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonito.errors import BonitoError
from bonito.evaluation.convert import CONVERTERS
from bonito.prompt.task_types import TaskType, resolve_task_type

TASKS = ("ynqa", "nli", "exqa")
"""Task types evaluation handles: ranked classification (ynqa, nli), generation (exqa)."""
DATA_FORMATS = ("labelled", *CONVERTERS)


@dataclass(frozen=True)
class Example:
    """One labelled example: `question` holds the hypothesis for nli; classification examples
    have `choices` and the index of the right one, `label`; exqa examples the gold `answers`."""

    id: str
    context: str
    question: str
    choices: tuple[str, ...] = ()
    label: int | None = None
    answers: tuple[str, ...] = ()


def evaluation_task(task_type: str | TaskType) -> str:
    """The short form of a task type evaluation handles (full names and short forms work)."""
    short = resolve_task_type(task_type).short
    if short not in TASKS:
        raise BonitoError(
            f"Evaluation handles the task types {', '.join(TASKS)}, not {short}; pick one of them."
        )
    return short


def parse_example(record: Any, task: str, line: int) -> Example:
    """One schema record as an Example of `task`; ValueError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("is not a JSON object")
    context = _text(record, "context")
    question = _text(record, "hypothesis" if task == "nli" else "question")
    id_ = str(record.get("id", line))
    if task == "exqa":
        return Example(id_, context, question, answers=_texts(record, "answers", 1))
    choices = _texts(record, "choices", 2)
    if len(set(choices)) < len(choices):
        raise ValueError("repeats a choice in 'choices'")
    label = record.get("label")
    if type(label) is not int or not 0 <= label < len(choices):
        raise ValueError(f"needs 'label', the index (0 to {len(choices) - 1}) of the right choice")
    return Example(id_, context, question, choices, label)


def _text(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"needs '{name}', a non-empty string")
    return value


def _texts(record: dict[str, Any], name: str, least: int) -> tuple[str, ...]:
    value = record.get(name)
    if (
        not isinstance(value, list)
        or len(value) < least
        or not all(isinstance(item, str) and item.strip() for item in value)
    ):
        raise ValueError(f"needs '{name}', a list of at least {least} non-empty strings")
    return tuple(value)


def schema_hint(record: Any, task: str) -> str:
    """What to do about a record of `task` that is not in the schema: the data format (and
    task type) whose converter reads it, when one does."""
    for name, converter in CONVERTERS.items():
        try:
            parse_example(converter.convert(record), converter.task_type, 0)
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
        kind = converter.task_type
        params, flags = ("", "") if kind == task else (f" and task_type {kind}", f" -t {kind}")
        return (
            f"it looks like {name} data: use data_format {name}{params} "
            f"(--data-format {name}{flags})"
        )
    return "see the schema in docs/evaluation.md, or name the set's own data format"


def load_examples(
    path: str | Path,
    task_type: str | TaskType,
    data_format: str = "labelled",
    limit: int | None = None,
) -> list[Example]:
    """The first `limit` (default all) examples of a JSON Lines file in the labelled schema, or in
    a labelled set's own format (`DATA_FORMATS`) converted on the way; blank lines are ignored."""
    task = evaluation_task(task_type)
    if data_format not in DATA_FORMATS:
        raise BonitoError(
            f"Unknown data format '{data_format}'; use one of {', '.join(DATA_FORMATS)}."
        )
    converter = CONVERTERS.get(data_format)
    if converter and converter.task_type != task:
        raise BonitoError(
            f"{data_format} data is {converter.task_type}, not {task}; evaluate it as "
            f"{converter.task_type}."
        )
    if limit is not None and limit < 1:
        raise BonitoError(f"The limit must be at least 1, got {limit}.")
    path = Path(path)
    if not path.is_file():
        raise BonitoError(f"The labelled data {path} is not a file; give a JSON Lines file.")
    examples: list[Example] = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if len(examples) == limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BonitoError(f"{path} line {number} is not JSON ({error.msg}).") from error
            try:
                if converter and isinstance(record, dict):
                    record = converter.convert(record)
                examples.append(parse_example(record, task, number))
            except (KeyError, ValueError) as error:
                wrong = f"has no '{error.args[0]}' field" if isinstance(error, KeyError) else error
                hint = (
                    f"expected a {data_format} record" if converter else schema_hint(record, task)
                )
                raise BonitoError(f"{path} line {number} {wrong} ({hint}).") from error
    if not examples:
        raise BonitoError(f"{path} holds no examples; give a file with at least one.")
    return examples
