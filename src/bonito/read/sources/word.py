"""Word .docx with python-docx: paragraphs and tables in document order."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

from bonito.read.sources.document import Document, Unreadable, require
from bonito.read.sources.text import MAX_CHARS, normalize

MAX_MARKUP = 4 * MAX_CHARS
"""Most bytes of document XML read from a .docx (Word's markup is several times its text): the
XML is parsed whole, and a small compressed file can inflate to gigabytes."""


def read_docx(path: Path) -> Iterator[Document]:
    docx = require("docx", "Reading .docx")
    _check_size(path)
    try:
        document = docx.Document(str(path))
    except (docx.opc.exceptions.PackageNotFoundError, zipfile.BadZipFile, KeyError) as error:
        raise Unreadable(
            "corrupt", "is not a readable .docx (damaged, password-protected or another format)"
        ) from error
    blocks = (_text(block) for block in document.iter_inner_content())
    text = normalize("\n\n".join(blocks))
    if not text:
        raise Unreadable("empty", "has no text")
    title = document.core_properties.title
    yield Document(str(path), text, str(path), {"title": title} if title else {})


def _check_size(path: Path) -> None:
    """Refuse a document whose XML inflates past MAX_MARKUP, before it is parsed (a package
    python-docx cannot open is left to it to say so)."""
    try:
        with zipfile.ZipFile(path) as package:
            size = package.getinfo("word/document.xml").file_size
    except (zipfile.BadZipFile, KeyError):
        return
    if size > MAX_MARKUP:
        raise Unreadable(
            "too_long",
            f"holds {size:,} bytes of document markup, more than {MAX_MARKUP:,}; split it into "
            "smaller documents to read it",
        )


def _text(block) -> str:
    """A paragraph's text, or a table as one line per row with its cells joined by ' | '."""
    if hasattr(block, "rows"):
        return "\n".join(" | ".join(dict.fromkeys(c.text for c in row.cells)) for row in block.rows)
    return block.text
