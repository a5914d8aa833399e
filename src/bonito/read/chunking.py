"""Token-aware contexts: documents cut at paragraph, then sentence, then word boundaries into
contexts the generator can take, each with its document, source, pages and character span.

Documents are counted with the generator's own tokenizer, in batches, once: a short document
whole, a longer one paragraph by paragraph (each with the whitespace before it, so the counts of
consecutive paragraphs add up to the count of their text), a paragraph longer than a context
sentence by sentence, a sentence longer than a context word by word. A context ends at the
strongest break that leaves it at least half full (else at least min_tokens) and what follows
at least min_tokens; contexts whose estimated length comes within MARGIN tokens of a limit are
measured exactly, and a context is never cut inside a word nor truncated."""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

from bonito.errors import BonitoError
from bonito.prompt.format import build_prompt
from bonito.prompt.task_types import TASK_TYPES, TaskType
from bonito.read.config import MAX_INPUT_TOKENS, Chunking
from bonito.read.sources import Document, Skip

MARGIN = 4
"""Contexts and prompts estimated this many tokens or fewer from a limit are measured exactly."""
SECTION_CHARS = 2**20
"""A longer document is measured a section at a time, cut at a break near this size, so memory
stays bounded whatever its length."""
BATCH_CHARS = 2**20
"""Text tokenized per call: many short documents share a call, a long one takes several."""
SHORT_CHARS_PER_TOKEN = 4
"""A document of at most max_tokens times this many characters is first counted whole."""
LONG_CHARS_PER_TOKEN = 32
"""A run of more than max_tokens times this many characters surely holds too many tokens."""
OVERLAP_CHARS_PER_TOKEN = 8
"""The overlap is looked for in the last `overlap` times this many characters before a context."""
TOKENIZER_NO_LIMIT = 10**7
"""A tokenizer's model_max_length this large or larger is transformers' "no limit" sentinel."""

PARAGRAPH, SENTENCE, LINE, WORD = 4, 3, 2, 1
"""How strong a break is: cuts go at the strongest break available."""
_WHOLE, _PARAGRAPHS, _SENTENCES, _WORDS = 3, 2, 1, 0
_BREAK = re.compile(  # one leading character class keeps the scan fast
    r"[.!?…。！？\n](?:"
    r"(?<=[.!?…])[\"'”’»)\]]?(\s+)(?=[^\sa-z])"  # 1: the space after the end of a sentence
    r"|(?<=[。！？])()(?=\S)"  # 2: after a CJK full stop
    r"|(?<=\n)(\s*))"  # 3: a line break and the space after it
)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WORD = re.compile(r"\S+")
_SPACE = re.compile(r"\s")
_SPACE_RUN = re.compile(r"\s*")


@dataclass(frozen=True)
class Context:
    """A piece of a document to send, its length in tokens, and where it came from: `span` is
    [start, end) in the document's text (for a text file, the file's text: text[start:end] is
    the context), `pages` the PDF pages with text it covers, `metadata` the document's row or
    title."""

    text: str
    tokens: int
    document: str
    source: str
    span: tuple[int, int]
    pages: tuple[int, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        """Where the context came from, as recorded with every task made from it."""
        pages = {"pages": list(self.pages)} if self.pages else {}
        return {
            "file": self.source,
            "document": self.document,
            "span": list(self.span),
            **pages,
            **self.metadata,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, **self.provenance()}


def model_window(tokenizer: Any, model: str, load: dict[str, Any]) -> int | None:
    """The longest prompt and completion `model` takes: its config's max_position_embeddings
    (or the like), else its tokenizer's model_max_length when that is a real limit; None if
    neither says."""
    from transformers import AutoConfig

    from bonito.models import config_window

    try:
        window = config_window(AutoConfig.from_pretrained(model, **load))
    except (OSError, ValueError, ImportError, KeyError):
        window = None
    limit = getattr(tokenizer, "model_max_length", None)
    if window is None and isinstance(limit, int) and 0 < limit < TOKENIZER_NO_LIMIT:
        return limit
    return window


class Unit(NamedTuple):
    """A run of a document's text that is not cut unless it must be: a whole short document, a
    paragraph, a sentence or a word (its `level`), with the whitespace before it; `strength` is
    the break before it, `tokens` its count (None until counted)."""

    start: int
    end: int
    strength: int
    level: int
    tokens: int | None = None

    @property
    def counted(self) -> int:
        """`tokens`, read only once counted (-1: too long to count)."""
        assert self.tokens is not None
        return self.tokens


@dataclass
class _Section:
    doc: Document
    start: int
    end: int
    whole: bool
    last: bool
    units: list[Unit] = field(default_factory=list)


class Chunker:
    """Cuts documents into contexts of at most `max_tokens` tokens of `tokenizer` (a
    transformers tokenizer), and at least `min_tokens` unless a context is a whole document;
    with `overlap`, a context starts with up to that many tokens of the end of the one before.
    The prompt around a context must fit `max_input_tokens` for every type in `task_types`;
    `window` is the model's (the longest prompt and completion it takes), None if unknown."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_tokens: int = Chunking.max_tokens,
        min_tokens: int = Chunking.min_tokens,
        overlap: int = Chunking.overlap,
        max_input_tokens: int = MAX_INPUT_TOKENS,
        task_types: Sequence[TaskType] = TASK_TYPES,
        window: int | None = None,
    ) -> None:
        Chunking(max_tokens, min_tokens, overlap, max_input_tokens)  # refuses what cannot be
        if not getattr(tokenizer, "is_fast", False):
            raise BonitoError(
                "Chunking needs a fast (Rust) tokenizer; this model's tokenizer has none."
            )
        self.tokenizer, self._backend = tokenizer, tokenizer.backend_tokenizer
        self.max_tokens, self.min_tokens, self.overlap = max_tokens, min_tokens, overlap
        self.max_input_tokens, self.window = max_input_tokens, window
        self._start_costs: dict[str, int] = {}
        self._widest = max(task_types, key=self._overhead)
        self.prompt_overhead = self._overhead(self._widest)
        room = max_input_tokens - self.prompt_overhead
        if room < min_tokens:
            raise BonitoError(
                f"max_input_tokens (--max-input-tokens) {max_input_tokens} leaves no room for a "
                f"context: the prompt around one takes {self.prompt_overhead} tokens (for "
                f"'{self._widest.short}') and min_tokens (--min-context-tokens) is {min_tokens}; "
                f"raise max_input_tokens to {self.prompt_overhead + min_tokens} or more."
            )
        if max_tokens > room:
            raise BonitoError(
                f"Contexts of max_tokens (--max-context-tokens) {max_tokens} do not fit: the "
                f"prompt around one takes {self.prompt_overhead} more (for "
                f"'{self._widest.short}') and the model takes at most max_input_tokens "
                f"(--max-input-tokens) {max_input_tokens}; use max_tokens {room} or less."
            )

    @classmethod
    def from_model(cls, model: str, **options: Any) -> Chunker:
        """A chunker with the tokenizer of `model`: a hub id, a local folder, or a .gguf file
        (its own tokenizer, read by transformers with the `gguf` package)."""
        from transformers import AutoTokenizer

        from bonito.models import check_model_path, model_load_error

        path = Path(model)
        gguf = path.suffix == ".gguf" and path.is_file()
        if not gguf:
            check_model_path(model)
        where = (str(path.parent), {"gguf_file": path.name}) if gguf else (model, {})
        try:
            tokenizer = AutoTokenizer.from_pretrained(where[0], **where[1])
        except (OSError, ValueError, ImportError) as error:
            raise model_load_error(model, error) from error
        return cls(tokenizer, **options, window=model_window(tokenizer, *where))

    def check_window(self, completion_tokens: int) -> None:
        """BonitoError unless the longest prompt and a completion of `completion_tokens` fit
        the model's window (when it is known)."""
        longest = min(self.max_input_tokens, self.max_tokens + self.prompt_overhead)
        if self.window is None or longest + completion_tokens <= self.window:
            return
        room = self.window - completion_tokens - self.prompt_overhead
        if room >= self.min_tokens:
            fix = f"use Chunking.max_tokens (--max-context-tokens) {room} or less"
        elif self.window > longest:
            fix = f"use SamplingParams.max_tokens (--max-tokens) {self.window - longest} or less"
        else:
            fix = (
                "lower SamplingParams.max_tokens (--max-tokens) and Chunking.max_tokens "
                "(--max-context-tokens)"
            )
        raise BonitoError(
            f"Prompts of up to {longest} tokens (contexts of up to {self.max_tokens} and the "
            f"prompt around them) and completions of up to {completion_tokens} do not fit the "
            f"model's window of {self.window} tokens; {fix}."
        )

    def chunk(self, items: Iterable[Document | Skip]) -> Iterator[Context | Skip]:
        """Contexts of each document in turn, lazily; Skips read on the way pass through, and
        every piece of text that cannot become a context is a Skip with its reason."""
        packer = None
        for batch in _batches(self._sections(items)):
            self._measure([item for item in batch if isinstance(item, _Section)])
            for item in batch:
                if isinstance(item, Skip):
                    yield item
                    continue
                if packer is None or packer.doc is not item.doc:
                    packer = _Packer(self, item.doc)
                yield from packer.feed(item.units, item.last)

    def count(self, texts: list[str]) -> list[int]:
        """Tokens in each text, without special tokens, in one call to the Rust tokenizer."""
        encodings = self._backend.encode_batch_fast(texts, add_special_tokens=False)
        return [len(encoding) for encoding in encodings]

    def prompt_fits(self, context: Context) -> bool:
        """Whether the prompt around `context` fits the model, measured exactly when close."""
        if context.tokens + self.prompt_overhead <= self.max_input_tokens - MARGIN:
            return True
        prompt = build_prompt(context.text, self._widest)
        return len(self.tokenizer(prompt).input_ids) <= self.max_input_tokens

    def _suffix(self, text: str, unit: Unit, budget: int) -> tuple[int, int]:
        """The longest run of whole words ending `unit` that has at most `budget` tokens: where
        it starts (the unit's end if none fits) and its tokens, from one tokenization of no
        more of the unit's end than `budget` tokens could take."""
        start = max(unit.start, unit.end - budget * OVERLAP_CHARS_PER_TOKEN)
        if start > unit.start:  # begin at a space, not inside a word
            space = _SPACE.search(text, start, unit.end)
            start = space.start() if space else unit.end
        encoding = self._backend.encode(text[start : unit.end], add_special_tokens=False)
        token_starts = [begin for begin, _ in encoding.offsets]
        gap = start
        for word in _WORD.finditer(text, start, unit.end):
            tokens = len(token_starts) - bisect_left(token_starts, gap - start)
            if tokens <= budget:
                return word.start(), tokens
            gap = word.end()
        return unit.end, 0

    def _overhead(self, task_type: TaskType) -> int:
        prompt = self.tokenizer(build_prompt("x", task_type)).input_ids
        return len(prompt) - self.count(["x"])[0]

    def _sections(self, items: Iterable[Document | Skip]) -> Iterator[_Section | Skip]:
        for item in items:
            if isinstance(item, Skip):
                yield item
                continue
            text = item.text
            start, end = len(text) - len(text.lstrip()), len(text.rstrip())
            if start >= end:
                yield Skip(item.id, "empty", "has no text")
            whole = True
            while start < end:
                stop = _section_end(text, start, end)
                yield _Section(item, start, stop, whole and stop == end, stop == end)
                start, whole = stop, False

    def _measure(self, sections: list[_Section]) -> None:
        """Give every section its counted units: all sections of a batch are counted together,
        a whole short document first, then paragraphs, sentences and words, as far as a unit
        must be split to fit in a context."""
        short = self.max_tokens * SHORT_CHARS_PER_TOKEN
        for section in sections:
            whole = section.whole and section.end - section.start <= short
            level = _WHOLE if whole else _PARAGRAPHS
            section.units = _split(section.doc.text, section.start, section.end, level)
        pending = sections
        while pending:
            uncounted = [(s.doc.text, u) for s in pending for u in s.units if u.tokens is None]
            counts = iter(self._tokens([(t, u) for t, u in uncounted if self._countable(u)]))
            for section in pending:
                units, section.units = section.units, []
                for unit in units:
                    if unit.tokens is None:  # -1: too long to count, surely too long to send
                        tokens = next(counts) if self._countable(unit) else -1
                        unit = Unit(unit.start, unit.end, unit.strength, unit.level, tokens)
                    if unit.level == _WORDS or 0 <= unit.counted <= self.max_tokens - MARGIN:
                        section.units.append(unit)
                    else:
                        text, level = section.doc.text, unit.level - 1
                        section.units += _split(text, unit.start, unit.end, level, unit.strength)
            pending = [s for s in pending if any(u.tokens is None for u in s.units)]

    def _tokens(self, units: list[tuple[str, Unit]]) -> list[int]:
        """Tokens of each unit of a text as it counts after the text before it."""
        counts = self.count([text[unit.start : unit.end] for text, unit in units])
        return [
            n - self._start_cost(text, u.start) for (text, u), n in zip(units, counts, strict=True)
        ]

    def _start_cost(self, text: str, start: int) -> int:
        """Tokens a unit counted alone takes beyond what it takes after the text before it:
        SentencePiece-style tokenizers mark the start of every text they are given."""
        found = _SPACE_RUN.match(text, start)  # whitespace or none: it always matches
        space = found.group() if found else ""
        if space not in self._start_costs:
            alone, before, both = self.count([space + "x", "y", "y" + space + "x"])
            self._start_costs[space] = alone + before - both if space else 0
        return self._start_costs[space]

    def _countable(self, unit: Unit) -> bool:
        return unit.end - unit.start <= self.max_tokens * LONG_CHARS_PER_TOKEN

    def _too_long(self, unit: Unit) -> bool:
        return unit.counted < 0 or unit.counted > self.max_tokens


class _Packer:
    """Packs the units of one document, section by section, into contexts."""

    def __init__(self, chunker: Chunker, doc: Document) -> None:
        self.chunker, self.doc = chunker, doc
        self.page_map = doc.metadata.get("pages") or []
        self.page_starts = [start for _, start in self.page_map]
        self.metadata = {k: v for k, v in doc.metadata.items() if k != "pages"}
        self.whole = True  # nothing emitted or skipped yet
        self._reset()

    def _reset(self) -> None:
        self.units: list[Unit] = []
        self.cum = [0]  # cum[i]: tokens of units[:i]
        self.next = 0  # the first unit not yet in a context
        self.previous: int | None = None  # the first unit of the context before, if adjacent

    def feed(self, units: list[Unit], last: bool) -> Iterator[Context | Skip]:
        keep = self.next if self.previous is None else self.previous
        self.units, self.cum = self.units[keep:], self.cum[keep:]
        self.next -= keep
        if self.previous is not None:
            self.previous -= keep
        for unit in units:
            if self.chunker._too_long(unit):
                self.whole = False
                yield from self._pack(end=True)
                yield self._skip_word(unit)
                self._reset()
            else:
                self.units.append(unit)
                self.cum.append(self.cum[-1] + unit.counted)
        yield from self._pack(end=last)

    def _pack(self, end: bool) -> Iterator[Context | Skip]:
        chunker = self.chunker
        lookahead = chunker.max_tokens + chunker.min_tokens
        while self.next < len(self.units):
            if not end and self.cum[-1] - self.cum[self.next] < lookahead:
                return
            yield self._emit(end)

    def _emit(self, end: bool) -> Context | Skip:
        chunker, text, start = self.chunker, self.doc.text, self.next
        lead = self._lead()
        if lead and self.units[start].counted > chunker.max_tokens - lead[1]:
            lead = None
        room = chunker.max_tokens - (lead[1] if lead else 0)
        while True:
            cut = self._cut(room, end)
            if cut is None:  # split the unit in the way and try again
                fits = self._fits(room)
                short = self.cum[fits] - self.cum[start] < chunker.min_tokens
                if self._refine(fits if short and fits < len(self.units) else fits - 1):
                    continue
                cut = fits
            first = lead[0] if lead else self.units[start].start
            begin, stop = _trim(text, first, self.units[cut - 1].end)
            tokens = (lead[1] if lead else 0) + self.cum[cut] - self.cum[start]
            if tokens > chunker.max_tokens - MARGIN:
                tokens = chunker.count([text[begin:stop]])[0]
            if tokens <= chunker.max_tokens:
                break
            if cut > start + 1:
                room -= tokens - chunker.max_tokens
            elif lead:
                lead, room = None, chunker.max_tokens
            else:
                self.next, self.previous = cut, None
                return self._skip_word(self.units[start]._replace(tokens=tokens))
        whole = self.whole and end and cut == len(self.units)
        self.next, self.previous, self.whole = cut, start, False
        if tokens < chunker.min_tokens and not whole:
            self.previous = None
            return Skip(
                self.doc.id,
                "too_short",
                f"characters {begin:,}-{stop:,} are {tokens} tokens, fewer than the "
                f"{chunker.min_tokens} a context needs, and not a whole document",
            )
        context = Context(
            text[begin:stop],
            tokens,
            self.doc.id,
            self.doc.source,
            (begin, stop),
            self._pages(begin, stop),
            self.metadata,
        )
        if not chunker.prompt_fits(context):
            return Skip(
                self.doc.id,
                "prompt_too_long",
                f"characters {begin:,}-{stop:,}: the prompt around them is longer than the "
                f"{chunker.max_input_tokens} tokens the model takes",
            )
        return context

    def _fits(self, room: int) -> int:
        """The end of the most units from `next` on that fit in `room` tokens (at least one)."""
        return max(bisect_right(self.cum, self.cum[self.next] + room) - 1, self.next + 1)

    def _refine(self, index: int) -> bool:
        """Split a unit into its sentences, or a sentence into its words; False for a word."""
        unit, text = self.units[index], self.doc.text
        if unit.level == _WORDS:
            return False
        parts = _split(text, unit.start, unit.end, unit.level - 1, unit.strength)
        counts = self.chunker._tokens([(text, part) for part in parts])
        self.units[index : index + 1] = [
            Unit(p.start, p.end, p.strength, p.level, n) for p, n in zip(parts, counts, strict=True)
        ]
        following = (u.counted for u in self.units[index:])
        self.cum[index + 1 :] = list(accumulate(following, initial=self.cum[index]))[1:]
        return True

    def _cut(self, room: int, end: bool) -> int | None:
        """Where the context starting at `next` ends: at the strongest break that leaves it at
        least half full (else at least min_tokens) and what follows at least min_tokens, the
        latest of equals; all the rest when it fits; None when no break qualifies."""
        units, cum, start = self.units, self.cum, self.next
        fits = self._fits(room)
        if end and fits == len(units):
            return fits
        minimum, rest = self.chunker.min_tokens, cum[-1] - cum[start]
        best, best_key = None, None
        for cut in range(start + 1, fits + 1):
            taken = cum[cut] - cum[start]
            if taken < minimum or (end and rest - taken < minimum):
                continue
            key = (2 * taken >= room, units[cut].strength, cut)
            if best_key is None or key > best_key:
                best, best_key = cut, key
        return best

    def _lead(self) -> tuple[int, int] | None:
        """Where the overlap with the context before starts, and its tokens: whole units back
        from `next`, then the last words of the unit before them that still fit."""
        overlap, previous, start = self.chunker.overlap, self.previous, self.next
        if not overlap or previous is None:
            return None
        cum, partial = self.cum, self.units[start - 1]
        first = bisect_left(cum, cum[start] - overlap, previous + 1, start)
        tokens = cum[start] - cum[first]
        if first < start:
            partial = self.units[first - 1]
        begin, more = self.chunker._suffix(self.doc.text, partial, overlap - tokens)
        if first < start and begin == partial.end:
            begin = self.units[first].start
        return (begin, tokens + more) if begin < self.units[start].start else None

    def _skip_word(self, unit: Unit) -> Skip:
        self.whole = False
        start, end = _trim(self.doc.text, unit.start, unit.end)
        size = f"{unit.counted:,} tokens" if unit.counted >= 0 else f"{end - start:,} characters"
        return Skip(
            self.doc.id,
            "too_long_word",
            f"characters {start:,}-{end:,} have no break for {size}, more than the "
            f"{self.chunker.max_tokens} a context holds",
        )

    def _pages(self, begin: int, stop: int) -> tuple[int, ...]:
        if not self.page_map:
            return ()
        first = max(bisect_right(self.page_starts, begin) - 1, 0)
        last = max(bisect_left(self.page_starts, stop) - 1, first)
        return tuple(number for number, _ in self.page_map[first : last + 1])


def _split(text: str, start: int, end: int, level: int, strength: int = PARAGRAPH) -> list[Unit]:
    """text[start:end] as units of `level` (one whole, paragraphs, sentences or words), each
    with the whitespace before it; the first keeps `strength`, the break before the whole run."""
    units, begin = [], start
    if level == _WHOLE:
        return [Unit(start, end, strength, level)]
    if level == _PARAGRAPHS:
        for match in _PARAGRAPH_BREAK.finditer(text, start, end):
            if match.start() > begin:
                units.append(Unit(begin, match.start(), strength, level))
                begin = match.start()
            strength = PARAGRAPH
        units.append(Unit(begin, end, strength, level))
        return units
    if level == _SENTENCES:
        for match in _BREAK.finditer(text, start, end):
            group = match.lastindex
            position = match.start() if group == 3 else match.start(group or 0)
            if position > begin:
                units.append(Unit(begin, position, strength, level))
                begin = position
            gap = text[position : match.end()]
            strength = PARAGRAPH if gap.count("\n") > 1 else LINE if group == 3 else SENTENCE
        units.append(Unit(begin, end, strength, level))
        return units
    for match in _WORD.finditer(text, start, end):
        units.append(Unit(begin, match.end(), strength, level))
        begin, strength = match.end(), WORD
    return units or [Unit(start, end, strength, level)]


def _section_end(text: str, start: int, end: int) -> int:
    """Where the section starting at `start` ends: the document's end, or the last paragraph
    break (else line break, else space) before SECTION_CHARS; the whitespace goes after."""
    if end - start <= SECTION_CHARS:
        return end
    limit = start + SECTION_CHARS
    for gap in ("\n\n", "\n", " "):
        cut = text.rfind(gap, start + SECTION_CHARS // 2, limit)
        if cut > start:
            return cut
    space = _SPACE.search(text, limit, end)
    return space.start() if space else end


def _trim(text: str, begin: int, stop: int) -> tuple[int, int]:
    """The span without whitespace at either end, but for the indentation of a first line that
    starts in it (a code block keeps its shape)."""
    start = begin
    while text[begin].isspace():
        begin += 1
    line = text.rfind("\n", 0, begin) + 1
    if line >= start:
        begin = line
    while text[stop - 1].isspace():
        stop -= 1
    return begin, stop


def _batches(items: Iterator[_Section | Skip]) -> Iterator[list[_Section | Skip]]:
    batch, size = [], 0
    for item in items:
        batch.append(item)
        if isinstance(item, _Section):
            size += item.end - item.start
            if size >= BATCH_CHARS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch
