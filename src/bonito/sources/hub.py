"""`datasets` data: a folder written by save_to_disk, or a dataset id on the hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bonito.errors import BonitoError
from bonito.sources.document import Document


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def read_saved_dataset(path: Path, text_field: str, split: str) -> Iterator[Document]:
    import datasets

    data = datasets.load_from_disk(str(path))
    yield from _rows(_pick_split(data, split, str(path)), text_field, str(path))


def read_hub_dataset(name: str, text_field: str, split: str) -> Iterator[Document]:
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except (OSError, ValueError, ConnectionError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BonitoError(
            f"Could not load the dataset '{name}' (split '{split}'): {reason} Download it where "
            f"there is internet access and save it with save_to_disk, or export it to JSONL, then "
            "pass the local path."
        ) from error
    yield from _rows(data, text_field, name)


def _pick_split(data, split: str, where: str):
    import datasets

    if not isinstance(data, datasets.DatasetDict):
        return data
    if split in data:
        return data[split]
    if len(data) == 1:
        return next(iter(data.values()))
    raise BonitoError(
        f"{where} has no split '{split}'; choose one of {', '.join(data)} with --split."
    )


def _rows(data, text_field: str, source: str) -> Iterator[Document]:
    if text_field not in data.column_names:
        raise BonitoError(
            f"{source} has no column '{text_field}' (it has: {', '.join(data.column_names)}); "
            "name the text column with --context-col."
        )
    rows = (v for batch in data.iter(batch_size=1000) for v in batch[text_field])
    for number, value in enumerate(rows, start=1):
        text = "" if value is None else str(value)
        yield Document(f"{source}:{number}", text, source, {"row": number})
