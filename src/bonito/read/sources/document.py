"""What readers produce: a Document, or a Skip saying why an input (or part of one) was not read."""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Document:
    """A text with where it came from. `id` is the file path, or `path:row` for a row of a table;
    `source` is the file path or dataset id; `metadata` holds what the reader knows: `row`,
    `title`, and for a PDF `pages`, a list of [page number, first character] pairs for the
    pages that have text."""

    id: str
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """Something that was not read or not sent. `reason` is a stable code; `detail` says in one
    sentence what was wrong (and where, for a line, row or span).

    Reasons from the readers: unsupported_type, unreadable, needs_extra, empty, no_match, binary,
    encoding, line_too_long, invalid_json, not_an_object, missing_field, missing_split, not_text,
    corrupt, encrypted, no_text_layer, too_long. From the chunker: too_long_word, too_short,
    prompt_too_long."""

    source: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class Unreadable(Exception):
    """Raised by a reader when a whole input cannot be read; the reading turns it into a Skip."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def require(module: str, purpose: str) -> ModuleType:
    """Import a dependency of the `docs` extra, or raise Unreadable saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise Unreadable(
            "needs_extra",
            f"{purpose} needs the '{module}' package: pip install 'bonito[docs]'",
        ) from error
