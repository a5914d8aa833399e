"""The engine protocol: prompts, sampling and per-prompt seeds in; each prompt's completions out,
in groups as they finish, so that a run can save them as it goes."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from bonito.errors import BonitoError
from bonito.prompt.sampling import SamplingParams, derive_seed

Finished = list[tuple[int, "list[Completion] | Failure"]]
"""A group of prompts that just finished: (index in the prompts given, its n completions, or the
Failure that ended it)."""


def engine_choice(name: str) -> str:
    """How a message tells the caller to choose the engine `name`: the argument, then the flag."""
    return f'engine="{name}" (--engine {name})'


@dataclass(frozen=True)
class Completion:
    """One sampled continuation: its text (prompt and special tokens removed), why it ended
    ("stop": end of sequence or a stop string, "length": max_tokens reached) and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string (left out, as vLLM and llama.cpp do), and whether
    one was found."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass(frozen=True)
class Failure:
    """A prompt the engine gave up on (say, a server that kept failing), and why in one line; a
    run records it and sends the prompt again when resumed."""

    reason: str


class Engine(Protocol):
    """A loaded generator. `generate` yields every prompt exactly once, in groups, in any order,
    each with `sampling.n` completions. With seeds (one per prompt) the samples of a prompt
    depend only on its text, its seed and the sampling, not on the other prompts."""

    name: str
    model: str

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Iterator[Finished]: ...


def prompt_seeds(sampling: SamplingParams, count: int, seeds: Sequence[int] | None) -> list[int]:
    """One seed per prompt: the ones given, else drawn from `sampling.seed` by position, else
    fresh random ones (no seed: not reproducible)."""
    if seeds is not None:
        if len(seeds) != count:
            raise ValueError(f"{len(seeds)} seeds for {count} prompts.")
        return list(seeds)
    if sampling.seed is None:
        return [random.getrandbits(63) for _ in range(count)]
    return [derive_seed(sampling.seed, index) for index in range(count)]


def generate_all(
    engine: Engine,
    prompts: Sequence[str],
    sampling: SamplingParams,
    seeds: Sequence[int] | None = None,
) -> list[list[Completion]]:
    """All completions, in prompt order; BonitoError if the engine gave up on a prompt."""
    results: list[list[Completion]] = [[] for _ in prompts]
    for group in engine.generate(prompts, sampling, seeds):
        for index, completions in group:
            if isinstance(completions, Failure):
                raise BonitoError(f"Prompt {index} failed: {completions.reason}")
            results[index] = completions
    return results
