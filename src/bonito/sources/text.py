"""Plain text and markdown: one Document per paragraph (blocks separated by blank lines)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from bonito.errors import BonitoError
from bonito.sources.document import Document

TEXT_SUFFIXES = (".txt", ".md")
_BLANK_LINES = re.compile(r"\n\s*\n")


def read_text(path: Path) -> Iterator[Document]:
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BonitoError(f"{path} is not UTF-8 text; convert it to UTF-8.") from error
    paragraphs = (p.strip() for p in _BLANK_LINES.split(content))
    for number, paragraph in enumerate((p for p in paragraphs if p), start=1):
        yield Document(f"{path}:{number}", paragraph, str(path), {"paragraph": number})
