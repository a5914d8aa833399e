"""Converters from the labelled sets' own formats (the files in ../shared/data) to the labelled
schema (docs/evaluation.md): one function per format, a record in, a schema record out; a missing
field raises KeyError, an unknown label ValueError."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]

# Gold labels -> the answers scored, in choice order. NLI-style sets answer Yes, Maybe or No, as
# promptsource's "can we conclude ...? Yes, no, or maybe?" templates (and bonito's tasks) do.
YES_NO_MAYBE = {"yes": "Yes", "no": "No", "maybe": "Maybe"}
NLI = {"entailment": "Yes", "neutral": "Maybe", "contradiction": "No"}
FACT_CHECK = {"SUPPORTS": "Yes", "NOT ENOUGH INFO": "Maybe", "REFUTES": "No"}


def labelled(value: Any, words: Mapping[str, str]) -> tuple[list[str], int]:
    """The choices (`words`' values) and the index of the one `value` stands for."""
    if value not in words:
        raise ValueError(f"has the label {value!r}, not one of {', '.join(map(repr, words))}")
    return list(words.values()), list(words).index(value)


def pubmedqa(record: Record) -> Record:
    """PubMedQA PQA-L: the abstract (conclusion left out), the question, yes/no/maybe."""
    choices, label = labelled(record["final_decision"], YES_NO_MAYBE)
    return {
        "id": record["id"],
        "context": record["context"],
        "question": record["question"],
        "choices": choices,
        "label": label,
    }


def nli(premise: str, hypothesis: str, words: Mapping[str, str]) -> Callable[[Record], Record]:
    """A converter for an NLI-style set whose records hold the premise, the hypothesis and a
    `label` among `words`."""

    def convert(record: Record) -> Record:
        choices, label = labelled(record["label"], words)
        return {
            "id": record["id"],
            "context": record[premise],
            "hypothesis": record[hypothesis],
            "choices": choices,
            "label": label,
        }

    return convert


contractnli = nli("premise", "hypothesis", NLI)
"""ContractNLI: the premise (evidence spans) and the hypothesis."""
vitaminc = nli("evidence", "claim", FACT_CHECK)
"""Vitamin C: the evidence sentence as premise, the claim as hypothesis."""


def squad(record: Record) -> Record:
    """A SQuAD-style question (SQuADShifts, PolicyQA): context, question, gold answer strings."""
    return {
        "id": record["id"],
        "context": record["context"],
        "question": record["question"],
        "answers": record["answers"],
    }


@dataclass(frozen=True)
class Converter:
    """A labelled set's own format: the task type its examples are and how to convert them."""

    task_type: str
    convert: Callable[[Record], Record]


CONVERTERS = {
    "pubmedqa": Converter("ynqa", pubmedqa),
    "contractnli": Converter("nli", contractnli),
    "vitaminc": Converter("nli", vitaminc),
    "squadshifts": Converter("exqa", squad),
    "policyqa": Converter("exqa", squad),
}
