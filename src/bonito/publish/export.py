"""Exports: a run's accepted tasks as a dataset folder in one of six formats, a train file (and a
test file, whole documents on each side, with --split-by-document) and a dataset card
(README.md) that the hub reads; optionally pushed to the hub.

Duplicates and rejected samples stay in the run's store. A run still going is exported as it
stands: the accepted tasks saved when the export starts, no more."""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from bonito import __version__
from bonito.errors import BonitoError
from bonito.generate.judge import counts
from bonito.prompt.sampling import derive_seed
from bonito.prompt.task_types import load_declared_task_types, resolve_task_type
from bonito.publish.decontamination import Decontamination, EvaluationData, overlapping_tasks
from bonito.read.sources import is_hub_id
from bonito.runs.reviews import Tally, decisions, reviewed_tasks, tally
from bonito.runs.run import status, stored
from bonito.runs.state import State, parse_state
from bonito.runs.store import RunStore
from bonito.util.outputs import OUTPUT, writable

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
PRIVATE_NOTE = (
    "Exported with --private: the columns that say where a task came from (`context`, "
    "`document`, `source`) and the names of the inputs, of the reading's include and exclude "
    "patterns and of a local generator are left out."
)
PARQUET_BATCH = 1000
"""Rows written to a Parquet file at a time."""
EXPORT_ENTRIES = ("README.md", "train.*", "test.*", "train", "test", "dataset_dict.json")
"""What an export writes into its folder, and what --overwrite removes."""
log = logging.getLogger("bonito")
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
)


PROVENANCE = ("context", "document", "source")
"""Columns that say where a task came from: --private leaves them out."""
COLUMNS = ("id", "task_type", "input", "output", *PROVENANCE)
"""The columns of the jsonl, parquet and hf formats."""


def metadata(task: dict[str, Any]) -> dict[str, Any]:
    return {"task_type": task["task_type"], "id": task["id"]}


def task_columns(task: dict[str, Any]) -> dict[str, Any]:
    """A task with where it came from: its passage, document and source."""
    return {key: task[key] for key in COLUMNS}


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


def prompt_completion_record(task: dict[str, Any]) -> dict[str, Any]:
    """TRL's standard prompt-completion type: the instruction in the paper's input-output prompt
    (as `bonito finetune` and `bonito evaluate` give it to base models), which ends in a newline,
    and the answer as the completion. SFTTrainer joins the two as written and computes the loss on
    the completion only."""
    from bonito.prompt.format import INPUT_OUTPUT

    prompt = INPUT_OUTPUT.format(instruction=task["input"])
    return {"prompt": prompt, "completion": task["output"]} | metadata(task)


def openai_record(task: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's chat fine-tuning line: a `messages` conversation and nothing else."""
    return {"messages": chat_record(task)["messages"]}


@dataclass(frozen=True)
class Format:
    """An export format: the file suffix, one record per task, its columns for the card (those
    that --private leaves out apart) and the trainers that read it."""

    suffix: str
    record: Callable[[dict[str, Any]], dict[str, Any]]
    columns: str
    trainer: str
    provenance: str = ""

    def describe(self, private: bool) -> str:
        return self.columns if private else self.columns + self.provenance


TASK_COLUMNS = "`id`, `task_type`, `input` (the instruction, passage included), `output`"
SOURCE_COLUMNS = (
    ", `context` (the passage), `document`, `source` (where the passage was read: file, row, "
    "page, span"
)
OWN_CODE = (
    "`bonito finetune`, or your own code (TRL's SFTTrainer wants the chat or prompt-completion "
    "format)"
)
FORMATS = {
    "jsonl": Format("jsonl", task_columns, TASK_COLUMNS, OWN_CODE, SOURCE_COLUMNS + ")"),
    "parquet": Format(
        "parquet", table_row, TASK_COLUMNS, OWN_CODE, SOURCE_COLUMNS + ", as a JSON string)"
    ),
    "hf": Format(
        "parquet", table_row, TASK_COLUMNS, OWN_CODE, SOURCE_COLUMNS + ", as a JSON string)"
    ),
    "chat": Format(
        "jsonl",
        chat_record,
        "`messages` (a user turn with the instruction, an assistant turn with the answer: TRL's "
        "conversational format for SFTTrainer), `task_type`, `id`",
        "TRL's SFTTrainer (conversational: it applies the model's chat template), for chat models",
    ),
    "prompt-completion": Format(
        "jsonl",
        prompt_completion_record,
        "`prompt` (the instruction as `<|input|>\\n...\\n<|output|>\\n`), `completion` (the "
        "answer), `task_type`, `id`",
        "TRL's SFTTrainer (prompt-completion: loss on the completion only), for base models",
    ),
    "openai": Format(
        "jsonl",
        openai_record,
        "`messages` (a user turn with the instruction, an assistant turn with the answer), only",
        "OpenAI's fine-tuning API (chat models), and services that take its JSONL",
    ),
    "alpaca": Format(
        "jsonl",
        alpaca_record,
        "`instruction` (passage included), `input` (empty), `output`, `task_type`, `id`",
        "LLaMA-Factory and axolotl (alpaca)",
    ),
    "sharegpt": Format(
        "jsonl",
        sharegpt_record,
        "`conversations` (a `human` turn with the instruction, a `gpt` turn with the answer), "
        "`task_type`, `id`",
        "LLaMA-Factory and axolotl (sharegpt)",
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
    def state(self) -> State:
        return parse_state(self.status["state"])[0]

    @property
    def seed(self) -> int:
        seed = self.config["sampling"].get("seed")
        return 0 if seed is None else seed


@contextmanager
def open_run(folder: Path) -> Iterator[RunView]:
    """A run folder opened read-only; BonitoError, as `bonito status` gives, when it is not one."""
    lines = status(folder)
    with stored(folder) as store:
        yield RunView(
            folder, store, lines, store.get("config"), store.get("reading") or {}, store.counts()
        )


def generator_facts(config: dict[str, Any], private: bool = False) -> dict[str, str]:
    """What made a run's tasks, one line each: generator, sampling, mix, inputs, reading,
    chunking, quality filters. Only these fields: never an engine option or an environment
    value. `private` withholds every name a user chose: the inputs', the reading's include and
    exclude patterns, and the generator's unless it is a hub id."""
    sampling = config["sampling"]
    dedup = config["dedup"]
    reading, chunking = config["reading"], config["chunking"]
    if private:
        reading = {key: value for key, value in reading.items() if key not in PATTERNS}
    inputs = "; ".join(
        ("an input" if private else item["input"])
        + (
            f" ({item['bytes']} bytes, blake2b {item['blake2b']})"
            if "blake2b" in item
            else " (hub dataset)"
        )
        for item in config["inputs"]
    )
    generator = config["model"]
    if private and not (is_hub_id(generator) and not Path(generator).exists()):
        generator = "a local model (name withheld)"
    return {
        "generator": generator,
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


PATTERNS = ("include", "exclude")
"""Reading settings that may hold file names."""


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
    """What an export wrote: the folder, format, sides (train, test), card and hub repo; whether
    it withholds names (--private) and what decontamination left out."""

    folder: Path
    format: str
    sides: dict[str, Side]
    card: Path
    repo: str | None = None
    private: bool = False
    decontamination: Decontamination | None = None
    reviewed_only: bool = False

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
    """The documents of the test side: of all the ways to split whole documents with at least
    one on each side, one whose test side holds the number of tasks nearest `fraction` of them,
    the smaller number when two are as near (so test is never the larger side below one half).
    Among splits of that size, the one found first in an order of the documents shuffled by
    `seed`."""
    documents = sorted(per_document)
    if len(documents) < 2:
        raise BonitoError(
            "split_by_document (--split-by-document) needs accepted tasks from at least two "
            f"documents, and this run has them from {len(documents)}; export without the split."
        )
    random.Random(derive_seed(seed, "split")).shuffle(documents)
    sizes = [per_document[document] for document in documents]
    total, target = sum(sizes), fraction * sum(sizes)
    smallest = min(sizes)  # a split with test this near exists, so none beyond it can win
    limit = min(total - 1, math.floor(target + abs(target - smallest)))
    goal = math.ceil(target - 0.5)  # the nearest whole number, the smaller one on a tie
    reached = subset_sums(sizes, limit, min(max(goal, 1), limit))
    best = min(reached, key=lambda size: (abs(size - target), size))
    test = set()
    while best:
        index = reached[best]
        test.add(documents[index])
        best -= sizes[index]
    return test


def subset_sums(sizes: Sequence[int], limit: int, goal: int) -> dict[int, int]:
    """Sums from 1 to `limit` of some of `sizes` (positive), each with the index of the last size
    of the first subset found to make it: subtracting that size leaves a sum made of earlier
    sizes, and so on down to 0. Stops early once `goal` is made. (A bit set as one integer: bit
    s is set when the sum s can be made.)"""
    mask = (1 << (limit + 1)) - 1
    reachable, last = 1, {}
    for index, size in enumerate(sizes):
        new = (reachable << size) & mask & ~reachable
        reachable |= new
        for bit in re.finditer("1", bin(new)[:1:-1]):  # lowest bit first
            last[bit.start()] = index
        if reachable >> goal & 1:
            break
    return last


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

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

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
    tasks: Iterable[dict[str, Any]],
    folder: Path,
    fmt: Format,
    test_documents: set[str],
    private: bool = False,
) -> dict[str, Side]:
    """Write each task's record (without the PROVENANCE columns when `private`) to
    train.SUFFIX, or to test.SUFFIX when its document is a test document; the sides as
    written."""
    splits = ("train", "test") if test_documents else ("train",)
    left_out = PROVENANCE if private else ()
    writers = {split: open_writer(folder / f"{split}.{fmt.suffix}", left_out) for split in splits}
    sides = {split: Side() for split in splits}
    try:
        for task in tasks:
            split = "test" if task["document"] in test_documents else "train"
            record = fmt.record(task)
            writers[split].write({k: v for k, v in record.items() if k not in left_out})
            sides[split].add(task)
    finally:
        for writer in writers.values():
            writer.close()
    return sides


def open_writer(path: Path, left_out: Sequence[str]) -> JsonLines | ParquetFile:
    """A writer of records for `path`, by its suffix; Parquet's columns are fixed."""
    if path.suffix == ".parquet":
        return ParquetFile(path, [name for name in COLUMNS if name not in left_out])
    return JsonLines(path)


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
    sides, totals, fmt = export.sides, view.counts, FORMATS[export.format]
    facts = generator_facts(view.config, export.private)
    where = repo or f"path/to/{export.folder.name}"
    lines = [
        card_header(export, hub=repo is not None),
        "# Instruction-tuning tasks generated with bonito",
        "",
        f"{export.tasks} tasks written by the generator `{facts['generator']}` from "
        f"{export.documents} documents with bonito {__version__}, exported as "
        f"`{export.format}`. Columns: {fmt.describe(export.private)}. For {fmt.trainer}.",
        "",
        f"Run state when exported: {view.status['state']}.",
        "",
    ]
    if export.private:
        lines += [PRIVATE_NOTE, ""]
    lines += [
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
    if (reviews := tally(view.store)).reviewed:
        lines += review_lines(reviews, export.reviewed_only)
    if export.decontamination:
        lines += decontamination_lines(export)
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


def review_lines(reviews: Tally, reviewed_only: bool) -> list[str]:
    """The card's account of the decisions people made with `bonito review`."""
    return [
        "## Human review",
        "",
        f"{reviews.reviewed} samples were reviewed by a person (`bonito review`): {reviews.kept} "
        f"kept, {reviews.rejected} rejected and left out, {reviews.rescued} rescued from the "
        f"samples the checks rejected or found duplicate and put in; {reviews.edited} of those "
        "accepted were edited, and are exported as edited."
        + (
            " Only tasks a person accepted are exported (--reviewed-only)." if reviewed_only else ""
        ),
        "",
        "| task type | kept, of the reviewed the checks passed | rescued, of the reviewed the "
        "checks rejected |",
        "|---|---|---|",
        *(f"| {kind} | {kept} | {rescued} |" for kind, kept, rescued in reviews.precision()),
        "",
    ]


def decontamination_lines(export: Export) -> list[str]:
    """The card's account of `--decontaminate`."""
    found = export.decontamination
    assert found is not None  # a card tells of it only when it ran
    if export.private:
        found = replace(found, against="the evaluation data")
    return [
        "## Decontamination",
        "",
        f"{found.sentence()} Words were compared lowercased, punctuation ignored.",
        "",
    ]


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
    """How to load the export with `datasets`; for chat and prompt-completion, how to train on
    it with TRL; for openai, how to upload it."""
    if format_name == "openai" and not hub:
        return [
            "```python",
            "from openai import OpenAI",
            "",
            f'file = OpenAI().files.create(file=open("{where}/train.jsonl", "rb"), '
            'purpose="fine-tune")',
            "```",
        ]
    loader = "load_from_disk" if format_name == "hf" and not hub else "load_dataset"
    lines = ["```python", f"from datasets import {loader}", "", f'dataset = {loader}("{where}")']
    if format_name in ("chat", "prompt-completion"):
        lines += [
            "",
            "from trl import SFTTrainer",
            "",
            'trainer = SFTTrainer(model="your/model", train_dataset=dataset["train"])',
        ]
    return [*lines, "```"]


def check_output(folder: Path, run: Path, overwrite: bool) -> None:
    """Refuse a file, the run folder itself, or a non-empty folder without `overwrite`."""
    if folder.exists() and not folder.is_dir():
        raise BonitoError(f"{OUTPUT} {folder} is a file; give a folder to write the dataset to.")
    if folder.resolve() == run.resolve():
        raise BonitoError(f"{OUTPUT} is the run folder; give another folder for the dataset.")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise BonitoError(
            f"{OUTPUT} {folder} is not empty; choose another folder or pass overwrite=True "
            "(--overwrite) to replace the export in it."
        )


def clear_export(folder: Path) -> None:
    """Remove what an earlier export wrote, its card first (a folder left without one is not
    a complete export); anything else in the folder stays."""
    for pattern in EXPORT_ENTRIES:
        for path in folder.glob(pattern):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


@contextmanager
def written_beside(output: Path) -> Iterator[Path]:
    """A new hidden folder beside `output` to write an export into; when the block ends without
    error, its entries replace the earlier export's in `output`, the card last. Until then
    `output` holds the earlier export as it was; the new folder is removed whatever happens,
    and one left by a killed export is removed first."""
    output.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{output.name}.partial-"
    for stale in output.parent.glob(prefix + "*"):
        shutil.rmtree(stale)
    new = Path(tempfile.mkdtemp(prefix=prefix, dir=output.parent))
    try:
        yield new
        output.mkdir(exist_ok=True)
        clear_export(output)
        for entry in sorted(new.iterdir(), key=lambda entry: entry.name == "README.md"):
            entry.replace(output / entry.name)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def check_repo_id(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise BonitoError(
            f"push_to_hub (--push-to-hub) '{repo}' is not a hub repo id ({error}); give one "
            "such as user/name."
        ) from None


def export_run(
    run: Path,
    output: Path,
    format_name: str = "jsonl",
    *,
    split_by_document: float | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    decontaminate: str | Path | None = None,
    overwrite: bool = False,
    reviewed_only: bool = False,
) -> Export:
    """Write the run's accepted tasks to the folder `output` in `format_name`, with a test split
    of whole documents holding about `split_by_document` of them, and a dataset card; push the
    dataset and card to the hub repo `push_to_hub` when given. `private` leaves the provenance
    columns and every local name out of the files and the card; `decontaminate`, a file of
    evaluation data, leaves out the tasks that overlap it. People's decisions (`bonito review`)
    apply: the tasks they rejected are left out, those they rescued put in, their edits written;
    `reviewed_only` writes only the tasks a person accepted."""
    if format_name not in FORMATS:
        raise BonitoError(
            f"format_name (--format) must be one of {', '.join(FORMATS)}; got '{format_name}'."
        )
    if split_by_document is not None and not 0 < split_by_document < 1:
        raise BonitoError(
            "split_by_document (--split-by-document) is the test share, between 0 and 1 (e.g. "
            f"0.1); got {split_by_document}."
        )
    if push_to_hub is not None:
        check_repo_id(push_to_hub)
    fmt = FORMATS[format_name]
    data = EvaluationData.from_file(decontaminate) if decontaminate is not None else None
    load_declared_task_types(run)
    with open_run(run) as view:
        check_output(output, run, overwrite)

        decided = decisions(view.store)

        def saved() -> Iterator[dict[str, Any]]:
            """The accepted tasks saved when the export started, as people decided."""
            return reviewed_tasks(
                islice(view.store.tasks(("accepted",)), view.counts["accepted"]),
                view.store.tasks(("rejected", "duplicate")),
                decided,
                reviewed_only,
            )

        left_out, found = overlapping_tasks(saved(), data) if data else (set(), None)
        if found and found.overlapping_tasks:
            log.warning("%s", found.sentence())
        per_document = Counter(t["document"] for t in saved() if t["id"] not in left_out)
        if not per_document:
            raise BonitoError(
                f"{run} has no task a person accepted yet: review it with `bonito review`, or "
                "export without reviewed_only (--reviewed-only)."
                if reviewed_only and not found
                else f"{run} has no accepted tasks to export"
                + (f": {found.sentence()}" if found else " yet.")
            )
        test = (
            split_documents(per_document, split_by_document, view.seed)
            if split_by_document is not None
            else set()
        )
        with writable(output), written_beside(output) as new:
            tasks = (task for task in saved() if task["id"] not in left_out)
            if format_name == "hf":
                with tempfile.TemporaryDirectory() as parquet:
                    sides = write_splits(tasks, Path(parquet), fmt, test, private)
                    save_hf(Path(parquet), sides, new)
            else:
                sides = write_splits(tasks, new, fmt, test, private)
            export = Export(
                output,
                format_name,
                sides,
                output / "README.md",
                push_to_hub,
                private,
                found,
                reviewed_only,
            )
            card = dataset_card(view, export, split_by_document)
            (new / "README.md").write_text(card, encoding="utf-8")
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
            "then export again with overwrite=True (--overwrite) to push."
        ) from error
