"""The 16 task types bonito-v1 was trained on: full names (what the model sees) and short forms."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from bonito.checks import (
    NLI_LABELS,
    PARAPHRASE_ID_LABELS,
    TE_LABELS,
    AnswerCheck,
    extractive_answer,
    offered_label,
    option_answer,
    yes_no_answer,
)
from bonito.errors import BonitoError


@dataclass(frozen=True)
class TaskType:
    """A task type: `name` goes into the prompt, `short` is what users usually type; `check`, when
    given, judges each answer: (instruction, answer, passage) -> reason code, or None to accept."""

    short: str
    name: str
    check: AnswerCheck | None = None


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
    valid = ", ".join(t.short for t in TASK_TYPES)
    raise BonitoError(
        f"Unknown task type '{value}'.{hint} Valid short forms: {valid} "
        "(full names work too; `bonito tasks` lists them)."
    )
