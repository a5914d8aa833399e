"""JSON Lines, JSON, CSV/TSV and Parquet: one Document per row, its text from one field. A bad
row is a Skip and the rows around it are still read; nothing holds more than one row at a time
but a .json file, which is parsed whole."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from bonito.read.sources.document import Document, Skip, Unreadable
from bonito.read.sources.text import MAX_LINE, decode, decode_line, detect

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
Row = tuple[str, int, Any]
"""Where a row is ("line 3", "row 3"), its number, and the record read there."""
_SURROGATE = re.compile("[\ud800-\udfff]")
"""Half of a character: JSON's `\\ud800` escapes make one, and no UTF-8 text holds it."""


def read_table(path: Path, text_field: str) -> Iterator[Document | Skip]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path, text_field)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, text_field, tabs=suffix == ".tsv")
    elif suffix == ".json":
        rows = _json_rows(path)
    else:
        rows = _json_lines(path)
    source = str(path)
    for row in rows:
        yield row if isinstance(row, Skip) else _document(source, text_field, *row)


def row_document(source: str, where: str, number: int, value: Any) -> Document | Skip:
    """The Document for one row's text value, or why it has none."""
    if isinstance(value, str) and (surrogate := _SURROGATE.search(value)):
        detail = (
            f"{where} holds half of a character (a lone surrogate, \\u{ord(surrogate[0]):x}, at "
            f"character {surrogate.start():,}); it cannot be written as UTF-8"
        )
        return Skip(source, "encoding", detail)
    if isinstance(value, str) and value.strip():
        return Document(f"{source}:{number}", value, source, {"row": number})
    if value is None or isinstance(value, str):
        return Skip(source, "empty", f"{where} has no text")
    return Skip(source, "not_text", f"{where} holds a {type(value).__name__}, not text")


def _document(source: str, text_field: str, where: str, number: int, record: Any):
    if not isinstance(record, dict):
        return Skip(source, "not_an_object", f"{where} is not a JSON object with fields")
    if text_field not in record:
        return Skip(
            source,
            "missing_field",
            f"{where} has no field '{text_field}' (it has: "
            f"{', '.join(map(str, record)) or 'nothing'}); name the text field with text_field "
            "(--text-field)",
        )
    return row_document(source, where, number, record[text_field])


def _json_lines(path: Path) -> Iterator[Row | Skip]:
    source = str(path)
    with path.open("rb") as file:
        encoding = _ascii_compatible(detect(file.read(2**16)))
        file.seek(0)
        for number, line in enumerate(_lines(file), start=1):
            where = f"line {number}"
            if line is None:
                yield Skip(source, "line_too_long", f"{where} is longer than {MAX_LINE:,} bytes")
                continue
            try:
                text = decode_line(line, encoding).rstrip("\r\n")
            except UnicodeDecodeError as error:
                yield Skip(source, "encoding", f"{where} is not valid {encoding} ({error.reason})")
                continue
            if not text.strip():
                continue
            try:
                yield where, number, json.loads(text)
            except json.JSONDecodeError as error:
                detail = f"{where} is not valid JSON ({error.msg} at column {error.colno})"
                yield Skip(source, "invalid_json", detail)
            except RecursionError:
                detail = f"{where} is JSON nested too deeply to read"
                yield Skip(source, "invalid_json", detail)


def _lines(file: BinaryIO) -> Iterator[bytes | None]:
    """Lines of a binary file; None for a line longer than MAX_LINE (read past, never held)."""
    while line := file.readline(MAX_LINE + 1):
        if len(line) <= MAX_LINE:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = file.readline(MAX_LINE)
        yield None


def _json_rows(path: Path) -> Iterator[Row | Skip]:
    """A JSON array of rows or one object; a file of JSON Lines named .json is read as such."""
    try:
        value = json.loads(decode(path.read_bytes()))
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            yield from _json_lines(path)
            return
        raise Unreadable(
            "invalid_json",
            f"is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})",
        ) from error
    rows = value if isinstance(value, list) else [value]
    for number, row in enumerate(rows, start=1):
        yield f"row {number}", number, row


def _csv_rows(path: Path, text_field: str, tabs: bool) -> Iterator[Row | Skip]:
    """Rows of a .tsv, or of a .csv whose delimiter (, ; tab or |) is sniffed from its header."""
    csv.field_size_limit(MAX_LINE)  # the default (128 KiB) would refuse long passages
    number, source = 0, str(path)
    with path.open("rb") as raw:
        sample = raw.read(2**16)
        encoding = _ascii_compatible(detect(sample))
        delimiter = "\t" if tabs else _delimiter(sample.decode(encoding, errors="replace"))
        raw.seek(0)
        lines = _DecodedLines(raw, encoding)
        reader = csv.DictReader(lines, delimiter=delimiter)
        try:
            require_column(text_field, list(reader.fieldnames or []))
        except csv.Error as error:
            raise Unreadable("corrupt", f"has no valid CSV header ({error})") from error
        lines.problem = None
        while row := _csv_row(reader, lines, number := number + 1, source):
            yield row


class _DecodedLines:
    """A binary file's lines decoded one by one as `decode_line` does, for the CSV reader: a line
    that is too long or not valid text is read past, its problem kept for the row it is in."""

    def __init__(self, file: BinaryIO, encoding: str) -> None:
        self.file, self.encoding = file, encoding
        self.problem: tuple[str, str] | None = None

    def __iter__(self) -> Iterator[str]:
        for line in _lines(self.file):
            if line is None:
                self.problem = ("line_too_long", f"has a line longer than {MAX_LINE:,} bytes")
                yield "\ufffd\n"
                continue
            try:
                yield decode_line(line, self.encoding)
            except UnicodeDecodeError as error:
                self.problem = ("encoding", f"is not valid {self.encoding} ({error.reason})")
                yield line.decode(self.encoding, errors="replace")


def _csv_row(
    reader: csv.DictReader, lines: _DecodedLines, number: int, source: str
) -> Row | Skip | None:
    """The next row, a Skip in its place when it is not valid CSV or text (the reader goes on at
    the next line), or None at the end."""
    try:
        row = next(reader, None)
    except csv.Error as error:
        return Skip(source, "corrupt", f"row {number} is not valid CSV ({error})")
    finally:
        problem, lines.problem = lines.problem, None
    if row is not None and problem:
        return Skip(source, problem[0], f"row {number} {problem[1]}")
    return None if row is None else (f"row {number}", number, row)


def _delimiter(sample: str) -> str:
    """The delimiter of a CSV file, sniffed from its header line among , ; tab and | (Excel
    writes ; where the comma is the decimal sign); a comma when the line cannot tell."""
    header = sample.lstrip("\ufeff").split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _parquet_rows(path: Path, text_field: str) -> Iterator[Row | Skip]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise Unreadable("corrupt", f"is not a readable Parquet file ({error})") from error
    require_column(text_field, table.schema_arrow.names)
    number = 0
    for batch in table.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            number += 1
            yield f"row {number}", number, {text_field: value}


def require_column(name: str, columns: list[str]) -> None:
    """Raise Unreadable unless a table with these columns has the text column."""
    if name not in columns:
        raise Unreadable(
            "missing_field",
            f"has no column '{name}' (it has: {', '.join(columns) or 'nothing'}); "
            "name the text column with text_field (--text-field)",
        )


def _ascii_compatible(encoding: str) -> str:
    if encoding.startswith(("utf-16", "utf-32")):
        raise Unreadable("encoding", f"is {encoding.upper()}; save it as UTF-8 to read it")
    return encoding
