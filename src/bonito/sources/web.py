"""HTML: the main text of a page (the article, not its menus, ads and footers) with trafilatura."""

from __future__ import annotations

import json
from pathlib import Path

from bonito.sources.document import Document, Unreadable, require
from bonito.sources.text import normalize

HTML_SUFFIXES = (".html", ".htm")


def read_html(path: Path) -> Document:
    trafilatura = require("trafilatura", "Reading HTML")
    extracted = trafilatura.extract(
        path.read_bytes(),
        output_format="json",
        with_metadata=True,
        include_comments=False,
    )
    record = json.loads(extracted) if extracted else {}
    lines = (record.get("text") or "").splitlines()
    text = normalize("\n\n".join(lines))
    if not text:
        raise Unreadable("empty", "has no main text (only scripts and markup, or not HTML)")
    title = record.get("title")
    return Document(str(path), text, str(path), {"title": title} if title else {})
