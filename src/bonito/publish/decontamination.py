"""Decontamination: generated tasks whose passage, instruction or answer shares a run of 13 words
with the evaluation data, found as GPT-3 and the lm-evaluation-harness find them (word 13-grams,
lowercased, punctuation ignored; docs/adaptation.md). `bonito adapt` leaves them out of its
trainings, `bonito export --decontaminate FILE` out of an export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bonito.errors import BonitoError

NGRAM = 13
"""Words in a run that counts as overlap: GPT-3's and the lm-evaluation-harness's choice."""
WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = NGRAM) -> Iterator[int]:
    """Hashes of the text's runs of `n` words (lowercased; punctuation and spacing ignored)."""
    words = WORD.findall(text.lower())
    return (hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1))


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, however deep."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def file_texts(path: Path) -> Iterator[str]:
    """The texts of an evaluation file: every string of each line of a JSON Lines file, or the
    whole text of any other text file."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        records = [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        yield text
        return
    for record in records:
        yield from strings(record)


class EvaluationData:
    """The word n-grams of evaluation texts, hashed into a set, and what overlaps them."""

    def __init__(self, texts: Iterable[str], name: str, n: int = NGRAM) -> None:
        self.name, self.n = name, n
        self.ngrams = {gram for text in texts for gram in ngrams(text, n)}

    @classmethod
    def from_file(cls, path: str | Path) -> EvaluationData:
        """The texts of a file (`file_texts`); BonitoError when it is not one or holds no run
        of NGRAM words."""
        path = Path(path)
        try:
            data = cls(file_texts(path), path.name)
        except (OSError, UnicodeDecodeError) as error:
            raise BonitoError(
                f"Cannot read the evaluation data {path} ({error}); give a JSON Lines or text file."
            ) from None
        if not data.ngrams:
            raise BonitoError(
                f"The evaluation data {path} holds no run of {NGRAM} words, so no overlap can be "
                "found; give the file whose texts the models are evaluated on."
            )
        return data

    def overlaps(self, text: str) -> bool:
        return any(gram in self.ngrams for gram in ngrams(text, self.n))

    def overlaps_task(self, task: dict[str, Any]) -> bool:
        """Whether a task's instruction or answer overlaps, apart from its passage (checked on
        its own, once per passage)."""
        return any(
            self.overlaps(part)
            for text in (task["input"], task["output"])
            for part in text.split(task["context"])
        )


@dataclass
class Decontamination:
    """What was checked against the evaluation data, what overlapped it, and whether that was
    left out."""

    against: str
    ngram: int = NGRAM
    passages: int = 0
    overlapping_passages: int = 0
    tasks: int = 0
    overlapping_tasks: int = 0
    left_out: bool = True

    def sentence(self) -> str:
        found = (
            f"{self.overlapping_passages} of the {self.passages} passages the tasks came from "
            f"and {self.overlapping_tasks} of the {self.tasks} tasks share a run of {self.ngram} "
            f"words with {self.against}"
        )
        if not self.overlapping_tasks:
            return f"{found}."
        outcome = (
            "were left out"
            if self.left_out
            else "were kept, as keep_contaminated (--keep-contaminated) asked"
        )
        return f"{found}; those tasks {outcome}."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def overlapping_tasks(
    tasks: Iterable[dict[str, Any]], data: EvaluationData, left_out: bool = True
) -> tuple[set[str], Decontamination]:
    """The ids of the tasks (as `RunStore.tasks` gives them) whose passage, instruction or
    answer overlaps the evaluation data, and the counts."""
    found = Decontamination(data.name, data.n, left_out=left_out)
    passages: dict[int, bool] = {}
    ids = set()
    for task in tasks:
        context = task["context_id"]
        if context not in passages:
            passages[context] = data.overlaps(task["context"])
        if passages[context] or data.overlaps_task(task):
            ids.add(task["id"])
        found.tasks += 1
    found.passages, found.overlapping_passages = len(passages), sum(passages.values())
    found.overlapping_tasks = len(ids)
    return ids, found
