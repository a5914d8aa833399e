"""PDF with PyMuPDF: text blocks in the order the file stores them, hyphenated line breaks joined,
one paragraph per block, and a page map from character offsets to the pages that have text; a
page with images and no text (scanned) is a Skip of its own."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from bonito.sources.document import Document, Skip, Unreadable, require
from bonito.sources.text import normalize

_HYPHENATED = re.compile(r"(\w)[-\u00ad]\n(?=[a-z])")
_SCANNED = "no_text_layer"


def read_pdf(path: Path) -> Iterator[Document | Skip]:
    pymupdf = require("pymupdf", "Reading PDF")
    pymupdf.TOOLS.mupdf_display_errors(False)
    try:
        pdf = pymupdf.open(path, filetype="pdf")
    except (pymupdf.FileDataError, pymupdf.EmptyFileError, ValueError) as error:
        raise Unreadable("corrupt", "is not a readable PDF (damaged, or not a PDF)") from error
    with pdf:
        if pdf.needs_pass:
            raise Unreadable("encrypted", "is encrypted; decrypt it first (e.g. qpdf --decrypt)")
        parts, pages, scanned, offset = [], [], [], 0
        flags = pymupdf.TEXT_MEDIABOX_CLIP  # and not TEXT_PRESERVE_LIGATURES: "ﬁ" becomes "fi"
        for number, page in enumerate(pdf, start=1):
            if page_text := _page_paragraphs(page, flags):
                pages.append([number, offset])
                parts.append(page_text)
                offset += len(page_text) + 2
            elif page.get_images():
                scanned.append(number)
        title = (pdf.metadata or {}).get("title") or None
    text = "\n\n".join(parts)
    if not text and scanned:
        raise Unreadable(_SCANNED, "has no text layer (scanned pages?); run OCR on it first")
    if not text:
        raise Unreadable("empty", "has no text")
    for number in scanned:
        detail = f"page {number} has no text layer (scanned?); run OCR on it first"
        yield Skip(str(path), _SCANNED, detail)
    metadata = {"pages": pages} | ({"title": title} if title else {})
    yield Document(str(path), text, str(path), metadata)


def _page_paragraphs(page, flags: int) -> str:
    """A page's text blocks as paragraphs: lines joined, hyphenated words made whole."""
    blocks = page.get_text("blocks", flags=flags)
    paragraphs = (_HYPHENATED.sub(r"\1", block[4]).replace("\n", " ") for block in blocks)
    return normalize("\n\n".join(paragraphs))
