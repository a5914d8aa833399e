"""`datasets` data: a folder written by save_to_disk, or a dataset id on the hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bonito.errors import first_line
from bonito.read.sources.document import Document, Skip, Unreadable
from bonito.read.sources.tables import require_column, row_document

DEFAULT_SPLIT = "train"


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def read_saved_dataset(path: Path, text_field: str, split: str) -> Iterator[Document | Skip]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as error:
        detail = f"is not a readable saved dataset ({first_line(error)})"
        raise Unreadable("corrupt", detail) from error
    yield from _rows(_pick_split(data, split), text_field, str(path))


def read_hub_dataset(name: str, text_field: str, split: str) -> Iterator[Document | Skip]:
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except (OSError, ValueError, ConnectionError) as error:
        raise Unreadable(
            "unreadable",
            f"could not be loaded (split '{split}'): {first_line(error)} Download it where there "
            "is internet access and save it with save_to_disk, or export it to JSONL, then pass "
            "the local path",
        ) from error
    yield from _rows(data, text_field, name)


def _pick_split(data, split: str):
    """The split asked for; a dataset without splits, or with only one, when none was asked
    (`split` is the default "train")."""
    import datasets

    if not isinstance(data, datasets.DatasetDict):
        if split == DEFAULT_SPLIT:
            return data
        raise Unreadable(
            "missing_split",
            f"is one dataset without splits, so it has no split '{split}'; leave split "
            "(--split) out to read it",
        )
    if split in data:
        return data[split]
    if len(data) == 1 and split == DEFAULT_SPLIT:
        return next(iter(data.values()))
    raise Unreadable(
        "missing_split",
        f"has no split '{split}'; choose one of {', '.join(data)} with split (--split)",
    )


def _rows(data, text_field: str, source: str) -> Iterator[Document | Skip]:
    require_column(text_field, data.column_names)
    rows = (value for batch in data.iter(batch_size=1000) for value in batch[text_field])
    for number, value in enumerate(rows, start=1):
        yield row_document(source, f"row {number}", number, value)
