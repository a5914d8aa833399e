"""The one type every reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """A text with where it came from: `source` is a file path or dataset id; `metadata` holds
    the row number, paragraph, title or pages, depending on the reader."""

    id: str
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
