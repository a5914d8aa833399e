"""PDF with PyMuPDF: text blocks in the order the file stores them, hyphenated line breaks joined,
one paragraph per block, and a page map from character offsets to the pages that have text; a
page with images and no text (scanned) is a Skip of its own. Running headers and footers (a first
or last block of a page that comes back, page number aside, on RUNNING pages), bare page numbers
and table-of-contents leader lines are left out."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bonito.read.sources.document import Document, Skip, Unreadable, require
from bonito.read.sources.text import MAX_CHARS, normalize

_HYPHENATED = re.compile(r"(\w)[-\u00ad]\n(?=[a-z])")
_SCANNED = "no_text_layer"
RUNNING = 3
"""Pages on which a first or last block must come back to be a running header or footer."""
_PAGE_NUMBER = re.compile(r"\s*([0-9]+|[ivxlcdm]+)\s*", re.IGNORECASE)
_LEADER = re.compile(r"(?:\.\s?){4,}[0-9ivxlcdm]+$", re.IGNORECASE)
"""The end of a table of contents line: dots leading to a page number."""
_DIGITS = re.compile(r"[0-9]+")
MAX_PAGE_INSTRUCTIONS = 4 * 2**20
"""Most bytes of drawing instructions a page may hold to be read: a page of dense text holds well
under 100 KiB, and MuPDF takes about a hundred bytes of memory per character it extracts, so a
small compressed stream that inflates to millions of characters (a PDF bomb) would exhaust it."""
_DRAW = re.compile(rb"/([^\s/\[\]()<>{}%]+)\s*Do\b")
"""A `/Name Do`: draw the XObject of that name."""
_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")


def read_pdf(path: Path) -> Iterator[Document | Skip]:
    pymupdf = require("pymupdf", "Reading PDF")
    pymupdf.TOOLS.mupdf_display_errors(False)
    try:
        pdf = pymupdf.open(path, filetype="pdf")
    except (pymupdf.FileDataError, pymupdf.EmptyFileError, ValueError) as error:
        raise Unreadable("corrupt", "is not a readable PDF (damaged, or not a PDF)") from error
    with pdf:
        if pdf.needs_pass:
            raise Unreadable("encrypted", "is encrypted; decrypt it first (e.g. `qpdf --decrypt`)")
        flags = pymupdf.TEXT_MEDIABOX_CLIP  # and not TEXT_PRESERVE_LIGATURES: "ﬁ" becomes "fi"
        blocks, oversized = _pages_blocks(pdf, flags)
        running = _running(blocks)
        parts, pages, scanned, offset = [], [], [], 0
        for number, (page, page_blocks) in enumerate(zip(pdf, blocks, strict=False), start=1):
            kept = [
                b for i, b in enumerate(page_blocks) if not _furniture(b, i, page_blocks, running)
            ]
            if page_text := normalize("\n\n".join(kept)):
                pages.append([number, offset])
                parts.append(page_text)
                offset += len(page_text) + 2
            elif page.get_images():
                scanned.append(number)
        title = (pdf.metadata or {}).get("title") or None
        unread = range(len(blocks) + 1, pdf.page_count + 1)
    text = "\n\n".join(parts)
    if not text and oversized:
        raise Unreadable("too_long", _oversized(*oversized[0]))
    if not text and scanned:
        raise Unreadable(_SCANNED, "has no text layer (scanned pages?); run OCR on it first")
    if not text:
        raise Unreadable("empty", "has no text")
    for number in scanned:
        detail = f"page {number} has no text layer (scanned?); run OCR on it first"
        yield Skip(str(path), _SCANNED, detail)
    for number, size in oversized:
        yield Skip(str(path), "too_long", _oversized(number, size))
    metadata = {"pages": pages} | ({"title": title} if title else {})
    yield Document(str(path), text, str(path), metadata)
    if unread:
        detail = (
            f"pages {unread.start}-{unread.stop - 1} were not read: the pages before hold more "
            f"than {MAX_CHARS:,} characters; split the PDF to read the rest"
        )
        yield Skip(str(path), "too_long", detail)


def _pages_blocks(pdf, flags: int) -> tuple[list[list[str]], list[tuple[int, int]]]:
    """The blocks of each page, up to the page at which the text passes MAX_CHARS; and the
    pages left out (none of their blocks) for holding more than MAX_PAGE_INSTRUCTIONS, with
    their size."""
    pages, oversized, size = [], [], 0
    for number, page in enumerate(pdf, start=1):
        if size > MAX_CHARS:
            break
        instructions = _drawn_bytes(pdf, page)
        if instructions > MAX_PAGE_INSTRUCTIONS:
            oversized.append((number, instructions))
        pages.append([] if instructions > MAX_PAGE_INSTRUCTIONS else _blocks(page, flags))
        size += sum(map(len, pages[-1]))
    return pages, oversized


def _drawn_bytes(pdf, page) -> int:
    """The bytes of drawing instructions a page runs: its own, and each form XObject's as many
    times as it is drawn (a form drawing a form a hundred times, a few levels deep, turns a few
    kilobytes into billions). Each form's stream is read once."""
    names: dict[int, dict[bytes, int]] = {}  # who draws (0: the page) -> its forms by name
    for xref, name, invoker, _ in page.get_xobjects():
        names.setdefault(invoker, {})[name.encode()] = xref
    sizes: dict[int, int] = {}

    def size(stream: bytes, invoker: int, drawing: frozenset[int]) -> int:
        total, forms = len(stream), names.get(invoker, {})
        for name, count in Counter(_name(m) for m in _DRAW.findall(stream)).items():
            xref = forms.get(name)
            if xref is None or xref in drawing:  # an image, or a form drawing itself
                continue
            if xref not in sizes:
                sizes[xref] = size(pdf.xref_stream(xref) or b"", xref, drawing | {xref})
            total += count * sizes[xref]
        return total

    return size(page.read_contents(), 0, frozenset())


def _name(raw: bytes) -> bytes:
    """A PDF name as written (`/A#20B`) as it reads (`A B`)."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _oversized(number: int, size: int) -> str:
    return (
        f"page {number} was not read: it runs {size:,} bytes of drawing instructions, more than "
        f"{MAX_PAGE_INSTRUCTIONS:,} (no page of text needs as many)"
    )


def _blocks(page, flags: int) -> list[str]:
    """A page's text blocks, each a paragraph: lines joined, hyphenated words made whole, table
    of contents leader lines left out."""
    blocks = []
    for block in page.get_text("blocks", flags=flags):
        lines = (line for line in block[4].split("\n") if not _LEADER.search(line.rstrip()))
        blocks.append(" ".join(_HYPHENATED.sub(r"\1", "\n".join(lines)).split()))
    return blocks


def _running(pages: list[list[str]]) -> set[str]:
    """The running headers and footers: first or last blocks, page numbers aside, that come back
    on at least RUNNING pages."""
    counts = Counter(shape for p in pages if p for shape in {_shape(p[0]), _shape(p[-1])})
    return {shape for shape, count in counts.items() if count >= RUNNING}


def _furniture(block: str, index: int, blocks: list[str], running: set[str]) -> bool:
    """Whether a block is page furniture, not text: empty, a bare page number, or a running
    header or footer."""
    edge = index in (0, len(blocks) - 1)
    return not block or (edge and bool(_PAGE_NUMBER.fullmatch(block) or _shape(block) in running))


def _shape(block: str) -> str:
    return _DIGITS.sub("#", block)
