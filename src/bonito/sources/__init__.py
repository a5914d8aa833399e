"""Readers: files, folders and datasets in, Documents out (one module per family of formats)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

from bonito.errors import BonitoError
from bonito.sources.document import Document
from bonito.sources.hub import is_saved_dataset, read_hub_dataset, read_saved_dataset
from bonito.sources.tables import TABLE_SUFFIXES, read_table
from bonito.sources.text import TEXT_SUFFIXES, read_text

SUFFIXES = (*TABLE_SUFFIXES, *TEXT_SUFFIXES)


def read_documents(
    inputs: Sequence[str | Path],
    text_field: str = "text",
    *,
    split: str = "train",
    limit: int | None = None,
) -> Iterator[Document]:
    """Documents from files, folders (recursively), saved `datasets` folders or hub dataset ids,
    in the order given; rows of tables keep their row number, text files their paragraph."""
    documents = (doc for item in inputs for doc in _read_one(str(item), text_field, split))
    return islice(documents, limit)


def _read_one(item: str, text_field: str, split: str) -> Iterator[Document]:
    path = Path(item).expanduser()
    if path.is_dir():
        if is_saved_dataset(path):
            yield from read_saved_dataset(path, text_field, split)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise BonitoError(
                f"The folder '{item}' holds no readable files ({', '.join(SUFFIXES)})."
            )
        for file in files:
            yield from _read_file(file, text_field)
    elif path.is_file():
        yield from _read_file(path, text_field)
    elif item.count("/") == 1 and not item.startswith((".", "/", "~")):
        yield from read_hub_dataset(item, text_field, split)
    else:
        raise BonitoError(f"The input '{item}' does not exist; give a file, a folder or a hub id.")


def _read_file(path: Path, text_field: str) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return read_table(path, text_field)
    if suffix in TEXT_SUFFIXES:
        return read_text(path)
    raise BonitoError(
        f"Cannot read '{path}': unknown file type '{suffix}'. Supported: {', '.join(SUFFIXES)}."
    )


__all__ = ["Document", "SUFFIXES", "read_documents"]
