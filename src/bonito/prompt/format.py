"""The bonito-v1 text format, byte for byte: the prompt the generators read and the parse of what
they write (see FORMAT.md in the project's shared material and docs/format.md)."""

from __future__ import annotations

from dataclasses import dataclass

from bonito.errors import BonitoError
from bonito.prompt.task_types import TaskType, resolve_task_type

INPUT_OUTPUT = "<|input|>\n{instruction}\n<|output|>\n"
"""The paper's prompt for base models (evaluation, fine-tuning, prompt-completion exports); the
answer follows it directly."""

PLACEHOLDER = "{{context}}"
PIPE = "<|pipe|>"
TASKTYPE, CONTEXT, TASK = "<|tasktype|>", "<|context|>", "<|task|>"
"""The markers that open the prompt's three sections (`build_prompt`)."""


@dataclass(frozen=True)
class Task:
    """An accepted sample: the instruction and its answer, with the passage put in place."""

    input: str
    output: str


@dataclass(frozen=True)
class Rejection:
    """A sample the parse dropped; `reason` is a stable code (no_pipe, several_pipes, ...)."""

    reason: str


def _passage(context: str) -> str:
    passage = context.strip()
    if not passage:
        raise BonitoError(
            f"The context {context!r} is empty after removing surrounding whitespace; "
            "give a passage with text or drop that row."
        )
    return passage


def build_prompt(context: str, task_type: str | TaskType) -> str:
    """The exact prompt bonito-v1 was trained on; the engine adds the tokenizer's BOS token."""
    name = resolve_task_type(task_type).name
    return f"{TASKTYPE}\n{name}\n{CONTEXT}\n{_passage(context)}\n{TASK}\n"


def parse_task(completion: str, context: str) -> Task | Rejection:
    """Split a completion into (input, output) at its single pipe, putting the passage in place of
    every `{{context}}` in both parts; anything else is a Rejection with its reason."""
    passage = _passage(context)
    parts = completion.strip().split(PIPE)
    if len(parts) == 1:
        return Rejection("no_pipe")
    if len(parts) > 2:
        return Rejection("several_pipes")
    instruction, answer = (part.strip() for part in parts)
    if not instruction:
        return Rejection("empty_input")
    if not answer:
        return Rejection("empty_output")
    return Task(
        input=instruction.replace(PLACEHOLDER, passage),
        output=answer.replace(PLACEHOLDER, passage),
    )
