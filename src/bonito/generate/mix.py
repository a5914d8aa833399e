"""Task mixes: which task types a run asks for, with weights, and which of them each context
gets, drawn deterministically from the run's seed and the context."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from bonito.errors import BonitoError
from bonito.prompt.sampling import derive_seed
from bonito.prompt.task_types import TaskType, all_task_types, resolve_task_type


@dataclass(frozen=True)
class TaskMix:
    """Task types and their weights, in the order given."""

    types: tuple[TaskType, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, values: Sequence[str]) -> TaskMix:
        """From `--task-type` values: names or short forms, `all`, `type:weight`, and
        comma-separated lists of these (`ynqa:2,exqa:1`); weights default to 1."""
        weights: dict[TaskType, float] = {}
        for value in (part for v in values for part in str(v).split(",") if part.strip()):
            name, _, weight = value.partition(":")
            every = name.strip().lower() == "all"
            kinds = all_task_types() if every else (resolve_task_type(name),)
            for kind in kinds:
                if kind in weights:
                    raise BonitoError(
                        f"Task type '{kind.short}' is given twice in the mix; give it once, "
                        "with a weight if it should come up more often (e.g. ynqa:2)."
                    )
                weights[kind] = _weight(weight, value)
        if not weights:
            raise BonitoError(
                "No task type given; name at least one (--task-type), e.g. ynqa, or all."
            )
        return cls(tuple(weights), tuple(weights.values()))

    def to_dict(self) -> dict[str, float]:
        return {kind.short: weight for kind, weight in zip(self.types, self.weights, strict=True)}

    def assign(self, per_context: int, seed: int, context_id: int) -> list[TaskType]:
        """The `per_context` distinct task types for one context, drawn by weight without
        replacement (Efraimidis-Spirakis keys) from a generator seeded by the run and the
        context, in mix order. Every type when per_context is the mix's size."""
        if per_context >= len(self.types):
            return list(self.types)
        rng = random.Random(derive_seed(seed, "mix", context_id))
        keys = [rng.random() ** (1 / weight) for weight in self.weights]
        chosen = sorted(range(len(keys)), key=lambda i: -keys[i])[:per_context]
        return [self.types[i] for i in sorted(chosen)]

    def check_per_context(self, per_context: int | None) -> int:
        """`--per-context`, defaulting to every type of the mix; at least 1, at most the mix."""
        if per_context is None:
            return len(self.types)
        if not 1 <= per_context <= len(self.types):
            raise BonitoError(
                f"per_context (--per-context) must be between 1 and the {len(self.types)} task "
                f"type(s) of the mix, got {per_context}; for more samples of one prompt raise n "
                "(--n)."
            )
        return per_context


def _weight(text: str, value: str) -> float:
    if not text.strip():
        return 1.0
    try:
        weight = float(text)
    except ValueError:
        weight = -1.0
    if not weight > 0:
        raise BonitoError(
            f"The weight in '{value}' must be a positive number, as in ynqa:2 or exqa:0.5."
        )
    return weight
