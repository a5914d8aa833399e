"""Task types: the 16 bonito-v1 was trained on, and those users register for their own generators.
Each has a full name (what the model sees) and a short form (what users type)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonito.errors import BonitoError
from bonito.prompt.checks import (
    NLI_LABELS,
    PARAPHRASE_ID_LABELS,
    TE_LABELS,
    AnswerCheck,
    extractive_answer,
    label_in,
    offered_label,
    option_answer,
    yes_no_answer,
)
from bonito.util.outputs import written_whole

TASK_TYPES_FILE = "bonito_task_types.yaml"
"""The file declaring the task types beyond the built-in ones that a trained generator was
trained on, or a run asks for; in their folders, so that `generate` (and `export`) register them
when they read one."""


@dataclass(frozen=True)
class TaskType:
    """A task type: `name` goes into the prompt, `short` is what users usually type; `check`, when
    given, judges each answer: (instruction, answer, passage) -> reason code, or None to accept."""

    short: str
    name: str
    check: AnswerCheck | None = None
    description: str = ""


TASK_TYPES: tuple[TaskType, ...] = (
    TaskType("exqa", "extractive question answering", extractive_answer),
    TaskType("mcqa", "multiple-choice question answering", option_answer),
    TaskType("qg", "question generation"),
    TaskType("qa", "question answering without choices"),
    TaskType("ynqa", "yes-no question answering", yes_no_answer),
    TaskType("coref", "coreference resolution"),
    TaskType("paraphrase", "paraphrase generation"),
    TaskType("paraphrase_id", "paraphrase identification", offered_label(PARAPHRASE_ID_LABELS)),
    TaskType("sent_comp", "sentence completion"),
    TaskType("sentiment", "sentiment"),
    TaskType("summarization", "summarization"),
    TaskType("text_gen", "text generation"),
    TaskType("topic_class", "topic classification"),
    TaskType("wsd", "word sense disambiguation"),
    TaskType("te", "textual entailment", offered_label(TE_LABELS)),
    TaskType("nli", "natural language inference", offered_label(NLI_LABELS)),
)

_BY_NAME = {t.name: t for t in TASK_TYPES}
_BY_SHORT = {t.short: t for t in TASK_TYPES}
_REGISTERED: dict[str, dict[str, Any]] = {}
"""Declarations of the registered task types, by short form (what `save_task_types` writes)."""
CHECKS: dict[str, Callable[[list[str]], AnswerCheck]] = {
    "yes_no": lambda labels: yes_no_answer,
    "extractive": lambda labels: extractive_answer,
    "option": lambda labels: option_answer,
    "offered_label": lambda labels: offered_label(labels),
    "label": lambda labels: label_in(labels),
}
"""Answer checks a task type file can declare by name; `labels` go to the label checks."""


def all_task_types() -> tuple[TaskType, ...]:
    """The built-in task types, then the registered ones in the order they were registered."""
    return (*TASK_TYPES, *(_BY_SHORT[key] for key in _REGISTERED))


def register_task_type(task_type: TaskType) -> TaskType:
    """Make a new task type known to the prompt, the checks, ctga building, training and
    generation (for this process). Registering the same definition again is a no-op; a short
    form or full name that another definition already has is refused."""
    short, name = task_type.short.strip(), task_type.name.strip()
    if not short or not name or any(c.isspace() for c in short) or "\n" in name:
        raise BonitoError(
            f"The task type ({task_type.short!r}, {task_type.name!r}) needs a short form "
            "without spaces and a one-line full name."
        )
    task_type = TaskType(short, name, task_type.check, task_type.description)
    for key in (short.lower(), name.lower()):
        taken = _BY_SHORT.get(key) or _BY_NAME.get(key)
        if taken is not None and taken != task_type:
            raise BonitoError(
                f"The task type '{short}' ({name}) clashes with the existing "
                f"'{taken.short}' ({taken.name}); choose another short form and name."
            )
    _BY_SHORT[short.lower()] = _BY_NAME[name.lower()] = task_type
    _REGISTERED.setdefault(short.lower(), {"short": short, "name": name})
    return task_type


def declare_task_type(declaration: dict[str, Any], where: str = "") -> TaskType:
    """Register a task type from its declaration: short, name, optional description, optional
    check (one of CHECKS) and labels (for the label checks)."""
    at = f" in {where}" if where else ""
    unknown = set(declaration) - {"short", "name", "description", "check", "labels"}
    if unknown or not {"short", "name"} <= set(declaration):
        raise BonitoError(
            f"The task type declaration {declaration!r}{at} needs `short` and `name` and may "
            "have `description`, `check` and `labels`, nothing else."
        )
    written = _declaration(declaration)
    short, check_name, labels = written["short"], written.get("check"), written.get("labels", [])
    if _REGISTERED.get(short.lower()) == written:
        return _BY_SHORT[short.lower()]
    if check_name is not None and check_name not in CHECKS:
        raise BonitoError(
            f"Unknown check '{check_name}' for task type '{short}'{at}; "
            f"choose one of {', '.join(CHECKS)} or leave it out."
        )
    if check_name in ("label", "offered_label") and not labels:
        raise BonitoError(f"The '{check_name}' check of task type '{short}'{at} needs `labels`.")
    check = CHECKS[check_name](labels) if check_name else None
    kind = register_task_type(
        TaskType(short, written["name"], check, written.get("description", ""))
    )
    _REGISTERED[short.lower()] = written
    return kind


def _declaration(declaration: dict[str, Any]) -> dict[str, Any]:
    """A declaration in its written form: stripped, lists as lists, empty fields left out."""
    written = {
        "short": str(declaration["short"]).strip(),
        "name": str(declaration["name"]).strip(),
        "description": str(declaration.get("description") or "").strip(),
        "check": declaration.get("check"),
        "labels": [str(x) for x in declaration.get("labels") or []],
    }
    return {key: value for key, value in written.items() if value}


def load_task_types(path: str | Path) -> list[TaskType]:
    """Register the task types declared in a YAML (or JSON) file: a list of declarations."""
    import yaml

    path = Path(path)
    try:
        declarations = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BonitoError(f"The task types file {path} cannot be read ({error}).") from error
    if not isinstance(declarations, list) or not all(isinstance(d, dict) for d in declarations):
        raise BonitoError(
            f"The task types file {path} must hold a list of declarations such as "
            "`- {short: news_topic, name: news topic classification}`."
        )
    return [declare_task_type(d, str(path)) for d in declarations]


def save_task_types(kinds: Iterable[TaskType], folder: str | Path) -> Path | None:
    """Write the declarations of the registered task types among `kinds` to the folder's
    TASK_TYPES_FILE (none is written when all are built in); returns the file."""
    import yaml

    declarations = [_REGISTERED[k.short.lower()] for k in kinds if k.short.lower() in _REGISTERED]
    if not declarations:
        return None
    path = Path(folder) / TASK_TYPES_FILE
    with written_whole(path) as file:
        file.write(yaml.safe_dump(declarations, sort_keys=False, allow_unicode=True))
    return path


def load_declared_task_types(folder: str | Path) -> list[TaskType]:
    """Register the task types a generator's or run's folder declares (none for hub ids and
    folders without TASK_TYPES_FILE)."""
    path = Path(str(folder)).expanduser() / TASK_TYPES_FILE
    return load_task_types(path) if path.is_file() else []


def resolve_task_type(value: str | TaskType) -> TaskType:
    """Find a task type by full name (tried first) or short form, ignoring case and outer spaces."""
    if isinstance(value, TaskType):
        return value
    key = str(value).strip().lower()
    found = _BY_NAME.get(key) or _BY_SHORT.get(key)
    if found:
        return found
    closest = difflib.get_close_matches(key, [*_BY_SHORT, *_BY_NAME], n=1, cutoff=0.5)
    hint = f" Did you mean '{closest[0]}'?" if closest else ""
    valid = ", ".join(t.short for t in all_task_types())
    raise BonitoError(
        f"Unknown task type '{value}'.{hint} Valid short forms: {valid} "
        "(full names work too; `bonito tasks` lists them)."
    )
