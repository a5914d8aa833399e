"""Exports: a run's accepted tasks as a dataset folder in one of six formats, a train file (and a
test file, whole documents on each side, with --split-by-document) and a dataset card
(README.md) that the hub reads; optionally pushed to the hub.

Duplicates and rejected samples stay in the run's store. A run still going is exported as it
stands: the accepted tasks saved when the export starts, no more."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from bonito import __version__
from bonito.errors import BonitoError
from bonito.generation import counts
from bonito.outputs import writable
from bonito.run import status
from bonito.sampling import derive_seed
from bonito.store import STORE_FILE, RunStore
from bonito.task_types import load_declared_task_types, resolve_task_type

CITATION = """@inproceedings{bonito:aclfindings24,
  title = {Learning to Generate Instruction Tuning Datasets for Zero-Shot Task Adaptation},
  author = {Nayak, Nihal V. and Nan, Yiyang and Trost, Avi and Bach, Stephen H.},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  year = {2024}
}"""
LICENCE_NOTE = (
    "The tasks are derived from the input documents listed above, whose licences apply to "
    "them, and were written by the generator named above, whose licence and terms of use apply "
    "too. bonito, the software that made them, is Apache-2.0; it places no terms of its own on "
    "the tasks. Check both before you publish or train on this dataset."
)
PARQUET_BATCH = 1000
"""Rows written to a Parquet file at a time."""
EXPORT_ENTRIES = ("README.md", "train.*", "test.*", "train", "test", "dataset_dict.json")
"""What an export writes into its folder, and what --overwrite removes."""
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
)


def metadata(task: dict[str, Any]) -> dict[str, Any]:
    return {"task_type": task["task_type"], "id": task["id"]}


def task_columns(task: dict[str, Any]) -> dict[str, Any]:
    """A task with where it came from: its passage, document and source."""
    keys = ("id", "task_type", "input", "output", "context", "document", "source")
    return {key: task[key] for key in keys}


def table_row(task: dict[str, Any]) -> dict[str, Any]:
    """`task_columns` with the source as a JSON string: its keys differ between kinds of input,
    which a table's fixed columns cannot hold."""
    return task_columns(task) | {"source": json.dumps(task["source"], ensure_ascii=False)}


def chat_record(task: dict[str, Any]) -> dict[str, Any]:
    """A `messages` conversation, TRL's conversational format; SFTTrainer drops the other
    columns."""
    messages = [
        {"role": "user", "content": task["input"]},
        {"role": "assistant", "content": task["output"]},
    ]
    return {"messages": messages} | metadata(task)


def alpaca_record(task: dict[str, Any]) -> dict[str, Any]:
    """Alpaca's fields; `input` stays empty, as bonito's instruction already holds the passage."""
    return {"instruction": task["input"], "input": "", "output": task["output"]} | metadata(task)


def sharegpt_record(task: dict[str, Any]) -> dict[str, Any]:
    turns = [{"from": "human", "value": task["input"]}, {"from": "gpt", "value": task["output"]}]
    return {"conversations": turns} | metadata(task)


@dataclass(frozen=True)
class Format:
    """An export format: the file suffix, one record per task, and its columns for the card."""

    suffix: str
    record: Callable[[dict[str, Any]], dict[str, Any]]
    columns: str


TASK_COLUMNS = (
    "`id`, `task_type`, `input` (the instruction, passage included), `output`, `context` (the "
    "passage), `document`, `source` (where the passage was read: file, row, page, span"
)
FORMATS = {
    "jsonl": Format("jsonl", task_columns, TASK_COLUMNS + ")"),
    "parquet": Format("parquet", table_row, TASK_COLUMNS + ", as a JSON string)"),
    "hf": Format("parquet", table_row, TASK_COLUMNS + ", as a JSON string)"),
    "chat": Format(
        "jsonl",
        chat_record,
        "`messages` (a user turn with the instruction, an assistant turn with the answer: TRL's "
        "conversational format for SFTTrainer), `task_type`, `id`",
    ),
    "alpaca": Format(
        "jsonl",
        alpaca_record,
        "`instruction` (passage included), `input` (empty), `output`, `task_type`, `id`",
    ),
    "sharegpt": Format(
        "jsonl",
        sharegpt_record,
        "`conversations` (a `human` turn with the instruction, a `gpt` turn with the answer), "
        "`task_type`, `id`",
    ),
}
"""hf is written as Parquet first, then saved with `datasets`."""


@dataclass
class RunView:
    """An open run read for an export or a report: its store (read-only), `bonito status`'s
    lines, configuration, reading and counts."""

    folder: Path
    store: RunStore
    status: dict[str, str]
    config: dict[str, Any]
    reading: dict[str, Any]
    counts: dict[str, Any]

    @property
    def seed(self) -> int:
        seed = self.config["sampling"].get("seed")
        return 0 if seed is None else seed


@contextmanager
def open_run(folder: Path) -> Iterator[RunView]:
    """A run folder opened read-only; BonitoError, as `bonito status` gives, when it is not one."""
    lines = status(folder)
    store = RunStore(folder / STORE_FILE, readonly=True)
    try:
        yield RunView(
            folder, store, lines, store.get("config"), store.get("reading") or {}, store.counts()
        )
    finally:
        store.close()


def generator_facts(config: dict[str, Any]) -> dict[str, str]:
    """What made a run's tasks, one line each: generator, sampling, mix, inputs, reading,
    chunking, quality filters. Only these fields: never an engine option or an environment
    value."""
    sampling = config["sampling"]
    dedup = config["dedup"]
    reading, chunking = config["reading"], config["chunking"]
    inputs = "; ".join(
        f"{item['input']} ({item['bytes']} bytes, blake2b {item['blake2b']})"
        if "blake2b" in item
        else f"{item['input']} (hub dataset)"
        for item in config["inputs"]
    )
    return {
        "generator": config["model"],
        "sampling": ", ".join(
            f"{key}={json.dumps(sampling.get(key))}"
            for key in ("n", "temperature", "top_p", "max_tokens", "seed", "stop")
        ),
        "task mix": ", ".join(f"{k}:{w:g}" for k, w in config["task_mix"].items())
        + f" ({config['per_context']} per context)",
        "inputs": inputs,
        "reading": ", ".join(f"{key}={json.dumps(value)}" for key, value in reading.items()),
        "chunking": ", ".join(f"{key}={json.dumps(value)}" for key, value in chunking.items()),
        "checks": "task-aware checks on" if config["checks"] else "off (--no-checks)",
        "dedup": dedup["mode"]
        + (f" (threshold {dedup['threshold']:g})" if dedup["mode"] == "near" else ""),
    }


@dataclass
class Side:
    """One side of an export: its documents and tasks by type."""

    documents: set[str] = field(default_factory=set)
    task_types: Counter = field(default_factory=Counter)

    @property
    def tasks(self) -> int:
        return self.task_types.total()

    def add(self, task: dict[str, Any]) -> None:
        self.documents.add(task["document"])
        self.task_types[task["task_type"]] += 1


@dataclass
class Export:
    """What an export wrote: the folder, format, sides (train, test), card and hub repo."""

    folder: Path
    format: str
    sides: dict[str, Side]
    card: Path
    repo: str | None = None

    @property
    def task_types(self) -> Counter:
        return sum((side.task_types for side in self.sides.values()), Counter())

    @property
    def tasks(self) -> int:
        return self.task_types.total()

    @property
    def documents(self) -> int:
        return sum(len(side.documents) for side in self.sides.values())


def split_documents(per_document: Mapping[str, int], fraction: float, seed: int) -> set[str]:
    """The documents of the test side: in an order shuffled by `seed`, each document goes to
    test when that brings its share of the tasks closer to `fraction`. The first document in
    that order always stays in train, and test gets at least the smallest other document."""
    documents = sorted(per_document)
    if len(documents) < 2:
        raise BonitoError(
            f"--split-by-document needs accepted tasks from at least two documents; this run "
            f"has them from {len(documents)}. Export without the split."
        )
    random.Random(derive_seed(seed, "split")).shuffle(documents)
    target = fraction * sum(per_document.values())
    test, size = set(), 0
    for document in documents[1:]:
        tasks = per_document[document]
        if abs(size + tasks - target) < abs(size - target):
            test.add(document)
            size += tasks
    return test or {min(documents[1:], key=per_document.__getitem__)}


class JsonLines:
    """One JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.file.close()


class ParquetFile:
    """A Parquet file of string columns, written in row groups of PARQUET_BATCH rows."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = ("id", "task_type", "input", "output", "context", "document", "source")
        self.schema = pa.schema([(name, pa.string()) for name in columns])
        self.writer = pq.ParquetWriter(path, self.schema)
        self.rows: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.rows.append(record)
        if len(self.rows) == PARQUET_BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()


def write_splits(
    tasks: Iterable[dict[str, Any]], folder: Path, fmt: Format, test_documents: set[str]
) -> dict[str, Side]:
    """Write each task's record to train.SUFFIX, or to test.SUFFIX when its document is a test
    document; the sides as written."""
    splits = ("train", "test") if test_documents else ("train",)
    kind = ParquetFile if fmt.suffix == "parquet" else JsonLines
    writers = {split: kind(folder / f"{split}.{fmt.suffix}") for split in splits}
    sides = {split: Side() for split in splits}
    try:
        for task in tasks:
            split = "test" if task["document"] in test_documents else "train"
            writers[split].write(fmt.record(task))
            sides[split].add(task)
    finally:
        for writer in writers.values():
            writer.close()
    return sides


def save_hf(parquet: Path, splits: Iterable[str], folder: Path) -> None:
    """The Parquet files of `splits` as a `datasets.DatasetDict` saved to `folder`."""
    import datasets

    with tempfile.TemporaryDirectory() as cache:
        dataset = datasets.DatasetDict(
            {
                split: datasets.Dataset.from_parquet(
                    str(parquet / f"{split}.parquet"), cache_dir=cache
                )
                for split in splits
            }
        )
        dataset.save_to_disk(str(folder))


def data_files(format_name: str, splits: Iterable[str], hub: bool = False) -> dict[str, str]:
    """Where each split's data lies in the folder, or in the hub repo `push_to_hub` makes."""
    if hub:
        return {split: f"data/{split}-*" for split in splits}
    if format_name == "hf":
        return {split: f"{split}/*.arrow" for split in splits}
    return {split: f"{split}.{FORMATS[format_name].suffix}" for split in splits}


def size_category(tasks: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if tasks < limit), "1M<n<10M")


def card_header(export: Export, hub: bool) -> str:
    """The card's YAML header: the hub reads its configs to load the splits."""
    from huggingface_hub import DatasetCardData

    files = data_files(export.format, export.sides, hub)
    data = DatasetCardData(
        pretty_name="Instruction-tuning tasks generated with bonito",
        task_categories=["text-generation"],
        size_categories=[size_category(export.tasks)],
        tags=["bonito", "synthetic", "instruction-tuning", *sorted(export.task_types)],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": path} for split, path in files.items()],
            }
        ],
    )
    return f"---\n{data.to_yaml()}\n---\n"


def dataset_card(
    view: RunView, export: Export, fraction: float | None, repo: str | None = None
) -> str:
    """The README.md of an export (of its hub repo when `repo` is given): what made the tasks,
    the splits and task types, the run's rejection statistics, how to load it, the licence
    note and the citation."""
    sides, totals = export.sides, view.counts
    facts = generator_facts(view.config)
    where = repo or f"path/to/{export.folder.name}"
    lines = [
        card_header(export, hub=repo is not None),
        "# Instruction-tuning tasks generated with bonito",
        "",
        f"{export.tasks} tasks written by the generator `{facts['generator']}` from "
        f"{export.documents} documents with bonito {__version__}, exported as "
        f"`{export.format}`. Columns: {FORMATS[export.format].columns}.",
        "",
        f"Run state when exported: {view.status['state']}.",
        "",
        "## Splits",
        "",
        "| split | documents | tasks |",
        "|---|---:|---:|",
        *(f"| {name} | {len(s.documents)} | {s.tasks} |" for name, s in sides.items()),
        "",
    ]
    if fraction is not None:
        share = sides["test"].tasks / export.tasks
        lines += [
            f"Split by document: every task of a document is on the same side. Test holds "
            f"{share:.1%} of the tasks (asked for {fraction:.1%}, as close as whole documents "
            f"allow), chosen with the run's seed {view.seed}.",
            "",
        ]
    lines += task_type_table(export)
    lines += ["## How the tasks were made", ""]
    lines += [f"- {name}: {value}" for name, value in facts.items()]
    skipped = counts(Counter(view.reading.get("skipped", {}))) or "none"
    rejected = totals["rejected"]
    lines += [
        "",
        "## Generation statistics",
        "",
        f"- documents read: {view.reading.get('documents', 0)} (skipped: {skipped})",
        f"- contexts (passages sent to the generator): {totals['contexts']}",
        f"- samples generated: {totals['samples']} ({totals['output_tokens']} tokens)",
        f"- accepted: {totals['accepted']} (exported: {export.tasks})",
        f"- duplicates, not exported: {totals['duplicates']}",
        f"- rejected, not exported: {sum(rejected.values())}"
        + (f" ({counts(Counter(rejected))})" if rejected else ""),
        "",
        "## Loading",
        "",
        *loading_snippet(export.format, where, hub=repo is not None),
        "",
        "## Licence",
        "",
        LICENCE_NOTE,
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def task_type_table(export: Export) -> list[str]:
    """Tasks per type and side, as a Markdown table."""
    sides = export.sides
    return [
        "## Task types",
        "",
        "| task type | full name | " + " | ".join(sides) + " | total |",
        "|---|---|" + "---:|" * (len(sides) + 1),
        *(
            f"| {short} | {resolve_task_type(short).name} | "
            + " | ".join(str(s.task_types[short]) for s in sides.values())
            + f" | {total} |"
            for short, total in sorted(export.task_types.items())
        ),
        "",
    ]


def loading_snippet(format_name: str, where: str, hub: bool) -> list[str]:
    """How to load the export with `datasets`, and for chat, how to train on it with TRL."""
    loader = "load_from_disk" if format_name == "hf" and not hub else "load_dataset"
    lines = ["```python", f"from datasets import {loader}", "", f'dataset = {loader}("{where}")']
    if format_name == "chat":
        lines += [
            "",
            "from trl import SFTTrainer",
            "",
            'trainer = SFTTrainer(model="your/model", train_dataset=dataset["train"])',
        ]
    return [*lines, "```"]


def check_output(folder: Path, run: Path, overwrite: bool) -> None:
    """Refuse a file, the run folder itself, or a non-empty folder without --overwrite."""
    if folder.exists() and not folder.is_dir():
        raise BonitoError(f"--output {folder} is a file; give a folder to write the dataset to.")
    if folder.resolve() == run.resolve():
        raise BonitoError("--output is the run folder; give another folder for the dataset.")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise BonitoError(
            f"--output {folder} is not empty; choose another folder or pass --overwrite to "
            "replace the export in it."
        )


def clear_export(folder: Path) -> None:
    """Remove what an earlier export wrote; anything else in the folder stays."""
    for pattern in EXPORT_ENTRIES:
        for path in folder.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def check_repo_id(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise BonitoError(
            f"--push-to-hub '{repo}' is not a hub repo id ({error}); give one such as user/name."
        ) from None


def accepted_per_document(store: RunStore) -> Counter:
    """Accepted tasks per document, in one pass over the tasks saved so far."""
    return Counter(task["document"] for task in store.tasks(("accepted",)))


def export_run(
    run: Path,
    output: Path,
    format_name: str = "jsonl",
    *,
    split_by_document: float | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
) -> Export:
    """Write the run's accepted tasks to the folder `output` in `format_name`, with a test split
    of whole documents holding about `split_by_document` of them, and a dataset card; push the
    dataset and card to the hub repo `push_to_hub` when given."""
    if format_name not in FORMATS:
        raise BonitoError(f"--format must be one of {', '.join(FORMATS)}; got '{format_name}'.")
    if split_by_document is not None and not 0 < split_by_document < 1:
        raise BonitoError(
            f"--split-by-document is the test share, between 0 and 1 (e.g. 0.1); got "
            f"{split_by_document}."
        )
    if push_to_hub is not None:
        check_repo_id(push_to_hub)
    fmt = FORMATS[format_name]
    load_declared_task_types(run)
    with open_run(run) as view:
        check_output(output, run, overwrite)
        per_document = accepted_per_document(view.store)
        if not per_document:
            raise BonitoError(f"{run} has no accepted tasks to export yet.")
        test = (
            split_documents(per_document, split_by_document, view.seed)
            if split_by_document is not None
            else set()
        )
        with writable(output):
            output.mkdir(parents=True, exist_ok=True)
            clear_export(output)
            tasks = islice(view.store.tasks(("accepted",)), per_document.total())
            if format_name == "hf":
                with tempfile.TemporaryDirectory() as parquet:
                    sides = write_splits(tasks, Path(parquet), fmt, test)
                    save_hf(Path(parquet), sides, output)
            else:
                sides = write_splits(tasks, output, fmt, test)
            export = Export(output, format_name, sides, output / "README.md", push_to_hub)
            card = dataset_card(view, export, split_by_document)
            export.card.write_text(card, encoding="utf-8")
        if push_to_hub:
            push(export, dataset_card(view, export, split_by_document, push_to_hub))
    return export


def load_export(export: Export, cache: str):
    """The exported files as a `datasets.DatasetDict`."""
    import datasets

    if export.format == "hf":
        return datasets.load_from_disk(str(export.folder))
    files = data_files(export.format, export.sides)
    builder = "parquet" if FORMATS[export.format].suffix == "parquet" else "json"
    paths = {split: str(export.folder / path) for split, path in files.items()}
    return datasets.load_dataset(builder, data_files=paths, cache_dir=cache)


def push(export: Export, card: str) -> None:
    """Push the export as a DatasetDict, then its card, to the hub dataset repo
    `export.repo`; a failure is one BonitoError that leaves the local export as it is."""
    from huggingface_hub import DatasetCard

    try:
        from huggingface_hub.errors import HTTPError  # httpx's, from huggingface_hub 1.0
    except ImportError:  # before, the hub client raised requests' errors, all OSErrors
        HTTPError = OSError
    try:
        with tempfile.TemporaryDirectory() as cache:
            load_export(export, cache).push_to_hub(export.repo)
        DatasetCard(card).push_to_hub(export.repo, repo_type="dataset")
    except (OSError, ValueError, HTTPError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise BonitoError(
            f"Could not push to the hub dataset {export.repo} ({reason}); the export in "
            f"{export.folder} is complete. Check the network and your login (`hf auth login`), "
            "then run the same command with --overwrite to push again."
        ) from error
