"""The engine protocol: prompts and sampling in, per prompt a list of completions out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bonito.sampling import SamplingParams

Progress = Callable[[int], None]
"""Called with the number of prompts just finished."""


@dataclass(frozen=True)
class Completion:
    """One sampled continuation: its text (prompt and special tokens removed), why it ended
    ("stop": end of sequence or a stop string, "length": max_tokens reached) and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    """A loaded generator. `generate` returns, in prompt order, `sampling.n` completions each."""

    name: str
    model: str

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, progress: Progress | None = None
    ) -> list[list[Completion]]: ...
