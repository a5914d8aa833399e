"""Quality checks on parsed tasks: generic ones for every task, and the answer check each task type
declares (`TaskType.check`). Each failure is a stable reason code; docs/checks.md lists them."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator, Set
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bonito.prompt.format import Task
    from bonito.prompt.task_types import TaskType

AnswerCheck = Callable[[str, str, str], str | None]
"""(instruction, answer, passage) -> reason code, or None when the answer is acceptable."""

NLI_LABELS = frozenset(
    {"yes", "no", "maybe", "true", "false", "neither", "correct", "incorrect", "inconclusive"}
    | {"always", "sometimes", "never", "guaranteed", "possible", "impossible"}
    | {"entailment", "neutral", "contradiction", "entails", "contradicts", "entail", "contradict"}
    | {"it's impossible to say", "it is not possible to tell"}
)
TE_LABELS = frozenset(
    {"yes", "no", "true", "false", "correct", "incorrect", "entailment", "not entailment"}
    | {"entailed", "not entailed"}
)
PARAPHRASE_ID_LABELS = frozenset(
    {"yes", "no", "true", "false", "equivalent", "not equivalent", "paraphrase", "not paraphrase"}
    | {"duplicate", "not duplicate", "duplicates", "not duplicates", "similar", "dissimilar"}
    | {"same", "different"}
)
LABEL_WORDS = NLI_LABELS | TE_LABELS | PARAPHRASE_ID_LABELS
"""Labels that mark an inline "x, y or z" as a label set (and not, say, part of a hypothesis)."""

_YES_NO = frozenset({"yes", "no"})
_TRIM = string.punctuation + string.whitespace + "‘’“”«»–—…"
_SEPARATOR = re.compile(r"\s*(?:[,;]\s*(?:(?:and|or)\s+)?|\s(?:and|or)\s+)\s*", re.IGNORECASE)
_LABEL = re.compile(r"\(?([a-z]|\d{1,2})\s*(?:[.):]|->)\s*(\S.*)", re.IGNORECASE | re.DOTALL)
_OPTION_LINE = re.compile(
    r"^[ \t]*(?:[-*•][ \t]*(?:\(?([a-z]|\d{1,2})[ \t]*(?:[.):]|->))?"
    r"|(?:(?:option|choice|answer|solution)[ \t]+)?\(?([a-z]|\d{1,2})[ \t]*(?:[.):]|->))"
    r"[ \t]*(\S.*?)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_PAREN_LABELS = re.compile(r"\(([a-z]|\d{1,2})\)\s*([^()\n]+)", re.IGNORECASE)
_INTRO = re.compile(
    r"\b(?:options|choices|answers|choose from|choose between|choose one"
    r"|pick one|pick from|select one|select from|candidates|possibilities)"
    r"[ \t]*[:：][ \t]*(.*)(?=((?:\n[ \t]*\S.*)*))",
    re.IGNORECASE,
)
_CLAUSE_END = re.compile(r"([\n?!.:])")
_ARTICLES = frozenset({"a", "an", "the"})
_UNSPACED = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
)
"""Thai, Lao, Myanmar, Khmer, kana and CJK ideographs: scripts written without spaces."""
_WORD = re.compile(rf"[{_UNSPACED}]|[^\W{_UNSPACED}]+")


def check_task(
    task: Task, task_type: TaskType, context: str, finish_reason: str = "stop"
) -> str | None:
    """None when the task passes every check, else the reason code of the first failed check."""
    if finish_reason == "length":
        return "truncated"
    instruction, answer = task.input, task.output
    if _blank(instruction) or _blank(answer):
        return "empty_field"
    if _same_text(instruction, answer):
        return "output_equals_input"
    passage = context.strip()
    if _has_marker(instruction, passage) or _has_marker(answer, passage):
        return "leftover_marker"
    return task_type.check(instruction, answer, passage) if task_type.check else None


def yes_no_answer(instruction: str, answer: str, passage: str) -> str | None:
    """ynqa: the answer is yes or no, or a label such as true, false or maybe that the
    instruction offers ("True or False?")."""
    keys = _answer_keys(answer)
    if not keys.isdisjoint(_YES_NO):
        return None
    labels = keys & LABEL_WORDS
    if labels and _offered(labels, _label_groups(instruction, passage, LABEL_WORDS)):
        return None
    return "not_yes_no"


def option_answer(instruction: str, answer: str, passage: str) -> str | None:
    """mcqa: the answer is one of the options the instruction lists, by its text or its label."""
    found = _offered(_answer_keys(answer), _option_groups(instruction, passage))
    if found is None:
        return "no_options"
    return None if found else "not_an_option"


def extractive_answer(instruction: str, answer: str, passage: str) -> str | None:
    """exqa: the answer's words are a run of whole words of the passage (`answer_words`); an
    answer without words ("The", "...") or a piece of a word is not."""
    words = answer_words(answer)
    return None if words and f" {words} " in _passage_words(passage) else "not_in_context"


def offered_label(default_labels: Iterable[str]) -> AnswerCheck:
    """A label check: the answer must be one of the labels the instruction offers, or one of
    `default_labels` when the instruction offers none that can be recognised (an inline
    "x, y or z" counts as offered when it holds one of LABEL_WORDS or `default_labels`)."""
    defaults = frozenset(_key(label) for label in default_labels)
    known = LABEL_WORDS | defaults

    def check(instruction: str, answer: str, passage: str) -> str | None:
        keys = _answer_keys(answer)
        found = _offered(keys, _label_groups(instruction, passage, known))
        if found is None:
            found = not keys.isdisjoint(defaults)
        return None if found else "label_not_offered"

    return check


def label_in(labels: Iterable[str]) -> AnswerCheck:
    """A closed label set (a custom task type's): the answer, or its labelled part ("B. Sports"),
    is one of `labels`, ignoring case, outer punctuation and spaces."""
    allowed = frozenset(_key(label) for label in labels)

    def check(instruction: str, answer: str, passage: str) -> str | None:
        return None if not _answer_keys(answer).isdisjoint(allowed) else "not_a_label"

    return check


def answer_words(text: str) -> str:
    """`text`'s words as exqa compares them: lower case, without a/an/the, one space apart.
    Punctuation parts words as a space does, and each character of a script written without
    spaces (Chinese, Japanese, Thai...) is a word of its own."""
    return " ".join(word for word in _WORD.findall(text.lower()) if word not in _ARTICLES)


@lru_cache(maxsize=1024)
def _passage_words(passage: str) -> str:
    return f" {answer_words(passage)} "


def _blank(text: str) -> bool:
    return not text or text.isspace()


def _same_text(a: str, b: str) -> bool:
    """Equal after case-folding and collapsing whitespace (the first words rule out most pairs)."""
    if a.split(None, 1)[0].lower() != b.split(None, 1)[0].lower():
        return False
    return a.lower().split() == b.lower().split()


def _has_marker(text: str, passage: str) -> bool:
    """A template marker left in `text`, outside any copy of the passage (which may hold them)."""
    if "{{" not in text and "<|" not in text:
        return False
    rest = _outside(text, passage)
    return "{{" in rest or "<|" in rest


def _outside(text: str, passage: str) -> str:
    """`text` with every copy of the passage replaced by a line break."""
    return text.replace(passage, "\n")


@lru_cache(maxsize=8192)
def _key(text: str) -> str:
    """How options, labels and answers are compared: lower case, single spaces, no punctuation
    around, and `,` `;` `and` `or` written as one separator."""
    parts = (" ".join(part.strip(_TRIM).split()) for part in _SEPARATOR.split(text.lower()))
    return ", ".join(part for part in parts if part)


def _answer_keys(answer: str) -> set[str]:
    """The answer's key and, for a labelled answer ("B. Paris", "(b) Paris"), those of its parts."""
    keys = {_key(answer)}
    labelled = _LABEL.fullmatch(answer.strip())
    if labelled:
        keys.update(_key(part) for part in labelled.groups())
    return keys


def _offered(keys: set[str], groups: Iterator[Set[str]]) -> bool | None:
    """Whether a group of options holds one of `keys`; None when there are no options at all."""
    found = None
    for options in groups:
        if not keys.isdisjoint(options):
            return True
        if options:
            found = False
    return found


def _option_groups(instruction: str, passage: str) -> Iterator[Set[str]]:
    """Option keys in the instruction outside the passage, surest first: option lines, then
    "Options: ..." lists, then each clause's inline "x, y or z" choices."""
    text = _outside(instruction, passage)
    yield _option_lines(text)
    yield _introduced_lists(text)
    yield from _inline_choices(text)


def _label_groups(instruction: str, passage: str, known: frozenset[str]) -> Iterator[Set[str]]:
    """Label sets in the instruction outside the passage: inline "x, y or z" choices that hold a
    `known` label (the common form), then option lines and "Options: ..." lists."""
    text = _outside(instruction, passage)
    for choices in _inline_choices(text):
        if not choices.isdisjoint(known):
            yield choices
    yield _option_lines(text)
    yield _introduced_lists(text)


def _option_lines(text: str) -> set[str]:
    """Bulleted or labelled lines ("- x", "A. x", "(b) x", "2) x", "C: x") and "(A) x (B) y"."""
    keys: set[str] = set()
    for bullet_label, label, option in _OPTION_LINE.findall(text):
        keys.update((_key(option), _key(bullet_label or label)))
    if text.count("(") > 1:
        for label, option in _PAREN_LABELS.findall(text):
            keys.update((_key(label), _key(option)))
    keys.discard("")
    return keys


def _introduced_lists(text: str) -> set[str]:
    """Options after "Options:", "Choose from:", "Possible answers:"... on the same line (split at
    commas, semicolons, and/or) or on the lines that follow."""
    keys: set[str] = set()
    for same_line, next_lines in _INTRO.findall(text):
        items = [item for item in _SEPARATOR.split(same_line) if item.strip(_TRIM)]
        for start in range(len(items)):
            for end in range(start + 1, len(items) + 1):
                keys.add(_key(", ".join(items[start:end])))
        for item in items or next_lines.split("\n"):
            keys.update(_answer_keys(item))
    keys.discard("")
    return keys


def _inline_choices(text: str) -> Iterator[frozenset[str]]:
    """Each clause's inline choices: "yes, no, or maybe", "louder or quieter" (up to three words of
    the first and last items, which the clause runs into), "between x and y", and "? x, y, z?"."""
    parts = _CLAUSE_END.split(text.lower())
    for i in range(0, len(parts), 2):
        clause = parts[i]
        if " or " in clause:
            yield _inline_items(clause)
        elif " between " in clause and " and " in clause:
            yield _inline_items(clause.rpartition(" between ")[2])
        elif "," in clause and i and parts[i - 1] == "?" and parts[i + 1 : i + 2] == ["?"]:
            yield frozenset(_key(item) for item in clause.split(","))


@lru_cache(maxsize=4096)
def _inline_items(clause: str) -> frozenset[str]:
    """Keys of the items of an inline "x, y or z" list, with up to three words at the end of all
    but the last item and at the start of the last; "x or not" also offers yes and no."""
    items = _SEPARATOR.split(clause)
    keys = {key for item in items for key in _answer_keys(item)}
    for item in items[:-1]:
        words = item.split()
        keys.update(_key(" ".join(words[-n:])) for n in range(1, min(3, len(words)) + 1))
    words = items[-1].split()
    keys.update(_key(" ".join(words[:n])) for n in range(1, min(3, len(words)) + 1))
    if _key(items[-1]) == "not":
        keys |= _YES_NO
    keys.discard("")
    return frozenset(keys)
