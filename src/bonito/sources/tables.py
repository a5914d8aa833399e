"""JSON Lines, JSON, CSV/TSV and Parquet: one Document per row, text from one field."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bonito.errors import BonitoError
from bonito.sources.document import Document

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def read_table(path: Path, text_field: str) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path, text_field)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    else:
        rows = _json_rows(path)
    for row_number, row in rows:
        if text_field not in row:
            raise BonitoError(
                f"{path} row {row_number} has no field '{text_field}' (it has: "
                f"{', '.join(map(str, row)) or 'nothing'}); name the text field with --context-col."
            )
        value = row[text_field]
        text = "" if value is None else str(value)
        yield Document(f"{path}:{row_number}", text, str(path), {"row": row_number})


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as file:
        first = file.read(1)
        file.seek(0)
        if path.suffix.lower() == ".json" and first == "[":
            yield from _numbered(json.load(file), path)
            return
        for number, line in enumerate(file, start=1):
            if line.strip():
                yield from _numbered([_json_line(line, path, number)], path, start=number)


def _json_line(line: str, path: Path, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise BonitoError(f"{path} line {number} is not valid JSON ({error.msg}).") from error


def _numbered(rows: Iterable[Any], path: Path, start: int = 1):
    for number, row in enumerate(rows, start=start):
        if not isinstance(row, dict):
            raise BonitoError(f"{path} row {number} is not a JSON object; each row needs fields.")
        yield number, row


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as file:
        yield from enumerate(csv.DictReader(file, delimiter=delimiter), start=1)


def _parquet_rows(path: Path, text_field: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
        raise BonitoError(
            f"{path} has no column '{text_field}' (it has: {', '.join(table.schema_arrow.names)}); "
            "name the text column with --context-col."
        )
    number = 0
    for batch in table.iter_batches(columns=[text_field]):
        for value in batch.column(0).to_pylist():
            number += 1
            yield number, {text_field: value}
