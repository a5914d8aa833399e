"""Plain text: encoding detection, whitespace normalisation for extracted text, and text files
(one Document each, their text as in the file; chunking does the splitting)."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from pathlib import Path

from bonito.read.sources.document import Document, Skip, Unreadable, require

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst")
MAX_LINE = 8 * 2**20
"""Longest line read, in bytes: a longer one is data, not running text."""
MAX_CHARS = 32 * 2**20
"""Most characters (or bytes of a text file) read from one document, which is held whole."""

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_WESTERN = "cp1252"
_TEXT_NAME = re.compile(
    r"(readme|licen[cs]e|copying|copyright|notice|news|changelog|changes|authors|install|todo"
    r"|thanks)([._-]|$)",
    re.IGNORECASE,
)
_VERSION = re.compile(r"\.\d+")
_BLANK_LINES = re.compile(r"\n{3,}")


def text_by_name(path: Path) -> bool:
    """Whether a file that no reader takes by its suffix is read as text (if its content is): it
    has no suffix (a version such as `Apache-2.0` is none), or a conventional name such as
    README.Debian, LICENSE-MIT or NEWS."""
    suffix = path.suffix
    return not suffix or bool(_VERSION.fullmatch(suffix) or _TEXT_NAME.match(path.name))


def read_text(path: Path) -> Iterator[Document | Skip]:
    """The file's text as it is, indentation and all, with line ends made `\n` (as Python
    reads text files): a context's span indexes it."""
    with path.open("rb") as file:
        data = file.read(MAX_CHARS + 1)
    if len(data) > MAX_LINE and len(max(data.splitlines(), key=len)) > MAX_LINE:
        raise Unreadable(
            "line_too_long",
            f"has a line longer than {MAX_LINE:,} bytes; it is data, not running text",
        )
    whole = len(data) <= MAX_CHARS
    data = data if whole else data[: data.rfind(b"\n", 0, MAX_CHARS) + 1]
    text = universal_newlines(decode(data))
    if not text.strip():
        raise Unreadable("empty", "has no text")
    yield Document(str(path), text, str(path))
    if not whole:
        detail = (
            f"is longer than {MAX_CHARS:,} bytes: its first {len(data):,} were read; split it "
            "into smaller files to read the rest"
        )
        yield Skip(str(path), "too_long", detail)


def decode(data: bytes) -> str:
    """Text in the encoding `detect` finds from the first MiB, line by line as `decode_line`
    does; Unreadable where it does not hold."""
    encoding = detect(data[: 2**20])
    try:
        if encoding.startswith("utf"):
            return data.decode(encoding)
        return "".join(decode_line(line, encoding) for line in data.splitlines(keepends=True))
    except UnicodeDecodeError as error:
        raise Unreadable(
            "encoding", f"is not valid {encoding} text (at byte {error.start:,})"
        ) from error


def decode_line(line: bytes, encoding: str) -> str:
    """A line of a file in `encoding`; in a file not in a Unicode encoding, a line that is valid
    UTF-8 is read as UTF-8 (text in another encoding almost never is), so that one stray byte
    that made the file look like Windows-1252 does not garble its UTF-8 lines."""
    if not encoding.startswith("utf"):
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return line.decode(encoding)


def detect(sample: bytes) -> str:
    """The encoding of text starting with `sample`: a byte-order mark, else UTF-8 when it holds
    valid UTF-8 characters, else charset-normalizer's best guess (Windows-1252 among equals).
    Binary data (NUL bytes, unless a few in UTF-8 text) raises Unreadable."""
    for bom, encoding in _BOMS:
        if sample.startswith(bom):
            return encoding
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    if b"\0" in sample and (not utf8 or sample.count(b"\0") * 10 > len(sample)):
        raise Unreadable("binary", "is binary data, not text (it holds NUL bytes)")
    if utf8:  # a stray NUL or two in it are the rows' problem
        return "utf-8"
    text = sample.decode("utf-8", errors="replace")
    if len(text) - len(text.encode("ascii", errors="ignore")) > text.count("\ufffd"):
        return "utf-8"  # it holds valid UTF-8 characters: the bad bytes are errors in it
    charset_normalizer = require("charset_normalizer", "Text that is not UTF-8")
    matches = charset_normalizer.from_bytes(sample)
    best = matches.best()
    if best is None:
        raise Unreadable("binary", "is binary data, not text in any known encoding")
    ties = (m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence))
    if any(_WESTERN in m.could_be_from_charset for m in ties):
        return _WESTERN  # short samples fit several code pages: take the commonest
    return best.encoding


def universal_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalize(text: str) -> str:
    """Single spaces, no spaces around line breaks, at most one blank line between paragraphs."""
    lines = universal_newlines(text).split("\n")
    return _BLANK_LINES.sub("\n\n", "\n".join(" ".join(line.split()) for line in lines)).strip()
