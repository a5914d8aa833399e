"""HTML: the main text of a page (the article, not its menus, ads and footers) with trafilatura,
read from its XML tree: a heading, paragraph, list, table, quote or code block is a paragraph;
line breaks inside a paragraph's source are spaces, a `<br>` a line break, and a code block
keeps its lines and indentation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from bonito.read.sources.document import Document, Unreadable, require
from bonito.read.sources.text import MAX_CHARS

HTML_SUFFIXES = (".html", ".htm")
_BREAK = "\0"
"""Marks a `<br>` while a paragraph's whitespace is collapsed (XML text never holds it)."""
_BLOCKS = ("code", "div", "head", "list", "p", "quote", "table")
_PILCROW = re.compile(r"\s*¶$")
"""The permalink sign Sphinx puts after headings."""


def read_html(path: Path) -> Iterator[Document]:
    trafilatura = require("trafilatura", "Reading HTML")
    from lxml import etree  # trafilatura's own dependency

    with path.open("rb") as file:
        page = file.read(MAX_CHARS + 1)
    if len(page) > MAX_CHARS:
        raise Unreadable(
            "too_long",
            f"is larger than {MAX_CHARS:,} bytes; split it into smaller pages to read it",
        )
    extracted = trafilatura.extract(
        page, output_format="xml", with_metadata=True, include_comments=False
    )
    tree = etree.fromstring(extracted.encode()) if extracted else None
    main = tree.find("main") if tree is not None else None
    blocks = (block for block in _blocks(main) if block.strip()) if main is not None else ()
    text = "\n\n".join(blocks)
    if tree is None or not text:
        raise Unreadable("empty", "has no main text (only scripts and markup, or not HTML)")
    title = _PILCROW.sub("", tree.get("title") or "")
    yield Document(str(path), text, str(path), {"title": title} if title else {})


def _blocks(element) -> Iterator[str]:
    """The paragraphs of trafilatura's `main` element (or a quote or division in it)."""
    for child in element:
        if child.tag == "code":
            yield "\n".join(line.rstrip() for line in "".join(child.itertext()).splitlines())
        elif child.tag == "list":
            yield "\n".join("- " + _inline(item) for item in child.findall("item"))
        elif child.tag == "table":
            rows = (" | ".join(_inline(cell) for cell in row) for row in child.findall("row"))
            yield "\n".join(rows)
        elif child.tag in ("quote", "div") and _holds_blocks(child):
            yield from _blocks(child)
        else:
            yield _inline(child)


def _holds_blocks(element) -> bool:
    """Whether an element holds only paragraphs (which are read one by one), no text of its own."""
    own = (element.text or "") + "".join(child.tail or "" for child in element)
    return len(element) > 0 and not own.strip() and all(c.tag in _BLOCKS for c in element)


def _inline(element) -> str:
    """An element's text as one paragraph: whitespace collapsed, a `<br>` a line break."""
    lines = "".join(_pieces(element)).split(_BREAK)
    return "\n".join(_PILCROW.sub("", " ".join(line.split())) for line in lines).strip()


def _pieces(element) -> Iterator[str]:
    yield _BREAK if element.tag == "lb" else element.text or ""
    for child in element:
        yield from _pieces(child)
        yield child.tail or ""
