"""ctga: bonito training pairs from promptsource templates, as ctga-v1 was made (see docs/ctga.md).

Each annotated template is rendered on a dataset row with the passage field set to a sentinel;
the sentinel becomes the `{{context}}` placeholder in the rendered prompt (the target INPUT) and
answer (the target OUTPUT). The pair is `source = build_prompt(passage, task_type)` and
`target = INPUT + "\\n<|pipe|>\\n" + OUTPUT`, with the dataset, template and row it came from."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from bonito.errors import BonitoError
from bonito.prompt.format import PIPE, PLACEHOLDER, TASKTYPE, build_prompt
from bonito.prompt.task_types import TaskType, resolve_task_type
from bonito.read.sources import check_input
from bonito.util.outputs import output_file, written_whole

SENTINEL = "bonitopassagesentinel7f3c9e1d"
"""Stands for the passage while a template renders; lowercase letters and digits only, so the
usual filters (string, truncate, trim) leave it whole."""
SEPARATOR = f"\n{PIPE}\n"
PROMPTSOURCE_SEPARATOR = "|||"
PIPE_PROTECTOR = "3ed2dface8203c4c9dfb1a5dc58e41e0"
"""promptsource's stand-in for a `|||` inside a field value while the template renders."""
TRUNCATION_LENGTH = 2048
"""promptsource truncates every `{{ ... }}` expression to this many characters."""
CTGA_HUB_ID = "BatsResearch/ctga-v1"

SKIP_REASONS = {
    "not_annotated": "a template with no task type in the annotations (counted once per template)",
    "unknown_template": "an annotation naming no template in the YAML (once per annotation)",
    "no_passage": "the rendered prompt (or answer, if allowed) does not contain the passage",
    "empty": "the rendered prompt or answer is empty",
    "several_separators": "the render has more than one `|||`",
    "pipe_in_text": f"the rendered prompt or answer contains {PIPE}",
    "render_error": "the template failed on the row (a missing field, a bad index, ...)",
    "missing_field": "the row has no passage field",
    "not_text": "the passage field is not text, or is blank",
}


@dataclass(frozen=True)
class DatasetSpec:
    """One source dataset: `name`/`subset` pick the promptsource templates (and the hub config),
    `source` is a hub id, a saved `datasets` folder or a JSONL/JSON/CSV/TSV/Parquet file,
    `passage_field` the row field the templates insert as the passage."""

    name: str
    source: str
    passage_field: str
    subset: str | None = None
    split: str = "train"

    @property
    def label(self) -> str:
        return f"{self.name}/{self.subset}" if self.subset else self.name


@dataclass(frozen=True)
class Template:
    """A promptsource template: its jinja (prompt `|||` answer) and answer-choices expression."""

    id: str
    name: str
    jinja: str
    answer_choices: str | None = None


@dataclass(frozen=True)
class Pair:
    """A training pair with its provenance; `row` is the row's index in the split (from 0)."""

    source: str
    target: str
    task_type: str
    dataset: str
    subset: str | None
    template: str
    template_id: str
    row: int


class Skipped(NamedTuple):
    """Why a template gave no pair on a row: one of SKIP_REASONS, and what was seen."""

    reason: str
    detail: str = ""


HINTS = {
    "missing_field": "name the rows' passage field in the spec's passage_field "
    "(--dataset NAME=SOURCE:FIELD)",
    "render_error": "give the rows the fields and shapes the templates use, those of the hub "
    "dataset they were written for (docs/ctga.md)",
}
"""What to do when every row was skipped for this reason."""


@dataclass
class Summary:
    """Counts of one build: pairs per dataset label and per task type, skips per reason, and
    the first skip of each reason that says more (the row's fields, the template's error)."""

    pairs: Counter[str] = field(default_factory=Counter)
    task_types: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)

    def skip(self, skipped: Skipped, where: str) -> None:
        """Count a skip; keep the first of its reason, at `where`, when it says more."""
        self.skipped[skipped.reason] += 1
        if skipped.detail and skipped.reason not in self.first:
            self.first[skipped.reason] = f"{where} {skipped.detail}"

    def nothing_made(self) -> BonitoError:
        """The error for a build that made no pair: the skips, the first one's details, and
        what to do."""
        reason = max(self.skipped, key=self.skipped.__getitem__, default=None)
        seen = f": {self.first[reason]}" if reason in self.first else ""
        hint = HINTS.get(reason or "", "check the passage field and the annotations (docs/ctga.md)")
        skipped = ", ".join(f"{r} {n}" for r, n in self.skipped.most_common()) or "none"
        return BonitoError(f"No pair was made (skipped: {skipped}){seen}; {hint}.")

    @property
    def total(self) -> int:
        return sum(self.pairs.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "pairs": dict(self.pairs),
            "task_types": dict(self.task_types),
            "skipped": dict(self.skipped),
        }


# --- dataset specs ----------------------------------------------------------------------------


def parse_spec(text: str) -> DatasetSpec:
    """`name[/subset]=SOURCE:passage_field[:split]`, e.g. `super_glue/boolq=boolq.jsonl:passage`."""
    usage = "write it as name[/subset]=SOURCE:passage_field[:split]"
    if "=" not in text:
        raise BonitoError(f"The dataset spec '{text}' has no '='; {usage}.")
    names, rest = text.split("=", 1)
    name, _, subset = names.strip().partition("/")
    parts = rest.split(":")
    if len(parts) not in (2, 3) or not name or not all(p.strip() for p in parts):
        raise BonitoError(
            f"The dataset spec '{text}' is not understood; {usage}, or list a source whose "
            "path holds ':' in a file for load_specs (--config)."
        )
    source, passage_field, *split = (p.strip() for p in parts)
    return DatasetSpec(name, source, passage_field, subset.strip() or None, *split)


def load_specs(path: str | Path) -> list[DatasetSpec]:
    """Dataset specs from a YAML or JSON file: a list of mappings (or `{datasets: [...]}`) with
    keys name, subset, source, passage_field, split; relative sources are read from the file's
    folder when they exist there."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BonitoError(f"The config '{path}' cannot be read ({error.strerror}).") from error
    except yaml.YAMLError as error:
        raise BonitoError(f"The config '{path}' is not valid YAML or JSON ({error}).") from error
    if isinstance(data, dict):
        data = data.get("datasets")
    if not isinstance(data, list) or not data:
        raise BonitoError(f"The config '{path}' holds no list of datasets under 'datasets'.")
    known = {f.name for f in fields(DatasetSpec)}
    specs = []
    for number, entry in enumerate(data, start=1):
        if not isinstance(entry, dict) or not {"name", "source", "passage_field"} <= set(entry):
            raise BonitoError(
                f"Dataset {number} in '{path}' needs at least name, source and passage_field."
            )
        unknown = set(entry) - known
        if unknown:
            raise BonitoError(
                f"Dataset {number} in '{path}' has unknown keys {', '.join(sorted(unknown))}; "
                f"use {', '.join(sorted(known))}."
            )
        entry = {key: str(value) for key, value in entry.items() if value is not None}
        local = path.parent / entry["source"]
        if not Path(entry["source"]).is_absolute() and local.exists():
            entry["source"] = str(local)
        specs.append(DatasetSpec(**entry))
    return specs


# --- templates and annotations ----------------------------------------------------------------


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor("!Template", mapping)
    Loader.add_constructor("!TemplateMetadata", mapping)
    return Loader


def load_templates(templates_dir: str | Path, name: str, subset: str | None) -> list[Template]:
    """The templates of `templates_dir/name[/subset]/templates.yaml`, in file order."""
    import yaml

    path = Path(templates_dir) / name / (subset or "") / "templates.yaml"
    label = f"{name}/{subset}" if subset else name
    if not path.is_file():
        raise BonitoError(f"There are no promptsource templates for '{label}' (no file {path}).")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BonitoError(f"The templates file {path} cannot be read ({error}).") from error
    entries = (data or {}).get("templates") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise BonitoError(f"The templates file {path} has no 'templates' mapping.")
    templates = []
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("jinja"), str):
            raise BonitoError(f"Template '{key}' in {path} has no jinja text.")
        templates.append(
            Template(
                id=str(entry.get("id") or key),
                name=str(entry.get("name") or key),
                jinja=entry["jinja"],
                answer_choices=entry.get("answer_choices"),
            )
        )
    return templates


_COLUMNS = {
    "dataset": ("dataset_name", "dataset"),
    "subset": ("dataset_config_name", "subset"),
    "template": ("template_name", "template"),
    "task_type": ("task_type",),
}

Annotations = dict[tuple[str, str | None], dict[str, TaskType]]
"""(dataset, subset) -> template name -> task type."""


def load_annotations(path: str | Path) -> Annotations:
    """Template task types from a CSV with columns dataset_name (or dataset),
    dataset_config_name (or subset; empty or absent for none), template_name (or template)
    and task_type (a full name or short form), as in bonito-v1's
    `bonito_prompts_task_types.csv`."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            header = reader.fieldnames or []
            columns = {}
            for key, names in _COLUMNS.items():
                found = next((n for n in names if n in header), None)
                if found is None and key != "subset":
                    raise BonitoError(
                        f"The annotations file {path} has no column {' or '.join(names)} "
                        f"(it has: {', '.join(header) or 'nothing'})."
                    )
                columns[key] = found
            annotations: Annotations = {}
            for number, row in enumerate(reader, start=2):
                dataset = (row[columns["dataset"]] or "").strip()
                subset = (row.get(columns["subset"]) or "").strip() or None
                template = row[columns["template"]] or ""
                try:
                    kind = resolve_task_type(row[columns["task_type"]] or "")
                except BonitoError as error:
                    raise BonitoError(f"Line {number} of {path}: {error}") from error
                annotations.setdefault((dataset, subset), {})[template] = kind
    except OSError as error:
        raise BonitoError(f"The annotations file {path} cannot be read ({error}).") from error
    return annotations


# --- rendering --------------------------------------------------------------------------------


def _most_frequent(items):
    if not items:
        return None
    counts = Counter(items).most_common()
    return [item for item, count in counts if count == counts[0][1]]


def make_environment(rng: random.Random):
    """A jinja2 environment like promptsource's (no autoescape, `zip`, the `choice` and
    `most_frequent` filters), with `choice` drawing from `rng` so builds are reproducible."""
    from jinja2 import BaseLoader, Environment

    env = Environment(loader=BaseLoader())
    env.globals.update(zip=zip)
    env.filters["choice"] = rng.choice
    env.filters["most_frequent"] = _most_frequent
    env.filters["highlight"] = lambda value: value
    return env


def _protect(example: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.replace(PROMPTSOURCE_SEPARATOR, PIPE_PROTECTOR)
        if isinstance(value, str)
        else value
        for key, value in example.items()
    }


def render(env, template: Template, example: dict[str, Any]) -> list[str]:
    """promptsource's `Template.apply`: every `{{ }}` truncated to 2,048 characters,
    `answer_choices` rendered and split on `|||`, the result split on `|||` and stripped."""
    choices = None
    if template.answer_choices is not None:
        rendered = env.from_string(template.answer_choices).render(**_protect(example))
        choices = [
            choice.strip().replace(PIPE_PROTECTOR, PROMPTSOURCE_SEPARATOR)
            for choice in rendered.split(PROMPTSOURCE_SEPARATOR)
        ]
    jinja = template.jinja.replace("}}", f" | string | truncate({TRUNCATION_LENGTH}) }}}}")
    text = env.from_string(jinja).render(**_protect(example), answer_choices=choices)
    return [
        part.replace(PIPE_PROTECTOR, PROMPTSOURCE_SEPARATOR).strip()
        for part in text.split(PROMPTSOURCE_SEPARATOR)
    ]


def undefined_use(template: Template, example: dict[str, Any]) -> str | None:
    """The first use of an undefined value (a missing field, `answers['text']` on a list) in
    rendering the template on the example, which promptsource's lenient rendering hides behind
    a later error; None when there is none."""
    from jinja2 import StrictUndefined, UndefinedError

    strict = make_environment(random.Random(0))
    strict.undefined = StrictUndefined
    try:
        render(strict, template, example)
    except UndefinedError as error:
        return _line(error)
    except Exception:  # another error: the lenient render's own is the one to show
        return None
    return None


def truncate(env, passage: str) -> str:
    """A passage as promptsource's `| string | truncate(2048)` leaves it."""
    return env.from_string(f"{{{{ p | string | truncate({TRUNCATION_LENGTH}) }}}}").render(
        p=passage
    )


def template_pair(
    env,
    template: Template,
    example: dict[str, Any],
    passage_field: str,
    passage_in_answer: bool = False,
) -> tuple[str, str, str] | Skipped:
    """(passage, INPUT, OUTPUT) with `{{context}}` where the passage was, or why not.
    The passage must be in the prompt, or with `passage_in_answer` in the prompt or answer."""
    if passage_field not in example:
        return Skipped(
            "missing_field", f"has no field '{passage_field}' (it has: {', '.join(example)})"
        )
    passage = example[passage_field]
    if not isinstance(passage, str) or not passage.strip():
        return Skipped("not_text")
    try:
        parts = render(env, template, {**example, passage_field: SENTINEL})
    except Exception as error:  # a template's own mistakes (missing keys, bad indexes) on this row
        cause = undefined_use(template, example) or _line(error)
        return Skipped("render_error", f"fails template '{template.name}' ({cause})")
    if len(parts) > 2:
        return Skipped("several_separators")
    prompt, answer = parts[0], parts[1] if len(parts) == 2 else ""
    if not prompt or not answer:
        return Skipped("empty")
    if SENTINEL not in prompt and not (passage_in_answer and SENTINEL in answer):
        return Skipped("no_passage")
    prompt, answer = prompt.replace(SENTINEL, PLACEHOLDER), answer.replace(SENTINEL, PLACEHOLDER)
    if PIPE in prompt or PIPE in answer:
        return Skipped("pipe_in_text")
    return passage, prompt, answer


# --- rows -------------------------------------------------------------------------------------

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def load_rows(spec: DatasetSpec) -> Sequence[dict[str, Any]]:
    """The rows of the spec's split: a list for a local file, a `datasets.Dataset` otherwise."""
    return read_rows(spec.source, spec.subset, spec.split)


def read_rows(source: str, subset: str | None = None, split: str = "train") -> Sequence[dict]:
    """The rows of a JSONL/JSON/CSV/TSV/Parquet file, a saved `datasets` folder (its `split`)
    or a hub dataset (`subset`, `split`)."""
    path = Path(source).expanduser()
    if path.is_file():
        return _file_rows(path)
    import datasets

    if path.is_dir():
        try:
            data = datasets.load_from_disk(str(path))
        except Exception as error:
            raise BonitoError(
                f"The folder '{path}' is not a dataset saved with save_to_disk ({_line(error)})."
            ) from error
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise BonitoError(
                    f"The saved dataset '{path}' has no split '{split}' "
                    f"(it has: {', '.join(data)})."
                )
            data = data[split]
        return data
    check_input(source)
    try:
        return datasets.load_dataset(source, subset, split=split)
    except Exception as error:
        raise BonitoError(
            f"The dataset '{source}' (split '{split}') could not be loaded from the "
            f"hub ({_line(error)}); save it with save_to_disk where there is internet access "
            "and pass the folder."
        ) from error


def _file_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8-sig", newline="") as file:
                rows = list(csv.DictReader(file, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            try:
                value = json.loads(text)
                rows = value if isinstance(value, list) else [value]
            except json.JSONDecodeError:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raise BonitoError(
                f"The file '{path}' is not one of {', '.join(LOCAL_SUFFIXES)}; convert it or "
                "save it as a dataset folder."
            )
    except BonitoError:
        raise
    except Exception as error:
        raise BonitoError(f"The file '{path}' cannot be read ({_line(error)}).") from error
    if not all(isinstance(row, dict) for row in rows):
        raise BonitoError(f"The file '{path}' has rows that are not objects with fields.")
    return rows


def _line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- building ---------------------------------------------------------------------------------


def build_ctga(
    specs: Sequence[DatasetSpec],
    templates_dir: str | Path,
    annotations: str | Path | Annotations,
    *,
    per_dataset: int | None = None,
    seed: int = 0,
    every_template: bool = False,
    truncate_passage: bool = True,
    passage_in_answer: bool = False,
    summary: Summary | None = None,
    rows: Callable[[DatasetSpec], Sequence[dict[str, Any]]] = load_rows,
) -> Iterator[Pair]:
    """Training pairs, dataset after dataset. The rows of each are visited in a seeded random
    order; each row gets one annotated template drawn at random (as ctga-v1 was made) or, with
    `every_template`, every annotated template. With `truncate_passage` (the default, as in
    ctga-v1) the passage in the source is cut as promptsource cuts fields: past 2,053
    characters, at a word boundary before 2,048, ending in "...". A render that is skipped
    loses that row (or that row and template); `per_dataset` caps the pairs of each dataset.
    `passage_in_answer` also keeps templates whose answer alone is the passage (ctga-v1 kept
    them: "Generate a review ... ||| {{review}}" gives a target ending in `{{context}}`).
    `summary`, when given, is filled with the counts as the pairs are produced. Templates and
    annotations are checked when this is called, the rows of a dataset when it is reached."""
    if per_dataset is not None and per_dataset < 1:
        raise BonitoError(f"per_dataset (--per-dataset) must be at least 1, not {per_dataset}.")
    if not specs:
        raise BonitoError("Give at least one dataset to build ctga pairs from.")
    table = annotations if isinstance(annotations, dict) else load_annotations(annotations)
    summary = summary if summary is not None else Summary()
    plans = [(spec, *_annotated(spec, templates_dir, table, summary)) for spec in specs]
    options = (every_template, truncate_passage, passage_in_answer)
    return _build(plans, per_dataset, seed, options, summary, rows)


def _annotated(
    spec: DatasetSpec, templates_dir: str | Path, table: Annotations, summary: Summary
) -> tuple[list[Template], dict[str, TaskType]]:
    templates = load_templates(templates_dir, spec.name, spec.subset)
    kinds = table.get((spec.name, spec.subset), {})
    names = {t.name for t in templates}
    usable = [t for t in templates if t.name in kinds]
    summary.skipped.update(
        ["not_annotated"] * (len(templates) - len(usable))
        + ["unknown_template"] * sum(1 for name in kinds if name not in names)
    )
    if not usable:
        raise BonitoError(
            f"No template of '{spec.label}' has a task type in the annotations; annotate some "
            "or leave the dataset out."
        )
    return usable, kinds


def _build(plans, per_dataset, seed, options, summary, rows) -> Iterator[Pair]:
    every_template, truncate_passage, passage_in_answer = options
    for spec, templates, kinds in plans:
        rng = random.Random(f"{seed}:{spec.label}")
        env = make_environment(rng)
        data = rows(spec)
        order = list(range(len(data)))
        rng.shuffle(order)
        made = 0
        for index in order:
            example = dict(data[index])
            chosen = templates if every_template else [rng.choice(templates)]
            for template in chosen:
                result = template_pair(
                    env, template, example, spec.passage_field, passage_in_answer
                )
                if isinstance(result, Skipped):
                    summary.skip(result, f"row {index} of {spec.label}")
                    continue
                passage, prompt, answer = result
                if truncate_passage:
                    passage = truncate(env, passage)
                kind = kinds[template.name]
                pair = Pair(
                    source=build_prompt(passage, kind),
                    target=prompt + SEPARATOR + answer,
                    task_type=kind.name,
                    dataset=spec.name,
                    subset=spec.subset,
                    template=template.name,
                    template_id=template.id,
                    row=index,
                )
                summary.pairs[spec.label] += 1
                summary.task_types[kind.name] += 1
                made += 1
                yield pair
                if per_dataset is not None and made >= per_dataset:
                    break
            if per_dataset is not None and made >= per_dataset:
                break


# --- output -----------------------------------------------------------------------------------

PAIR_COLUMNS = [f.name for f in fields(Pair)]


def write_pairs(pairs: Iterable[Pair], path: str | Path) -> int:
    """Write pairs to JSONL or Parquet (by the file's suffix), one row per pair with its
    provenance; returns the number written. Parquet pairs are held in memory until the end."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise BonitoError(f"The output '{path}' must end in .jsonl or .parquet.")
    output_file(path, "path (--output)")
    count = 0
    if suffix == ".jsonl":
        with written_whole(path) as file:
            for pair in pairs:
                file.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")
                count += 1
        return count
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {name: [] for name in PAIR_COLUMNS}
    for pair in pairs:
        for name, value in asdict(pair).items():
            columns[name].append(value)
        count += 1
    schema = pa.schema(
        [(name, pa.int64() if name == "row" else pa.string()) for name in PAIR_COLUMNS]
    )
    with written_whole(path, binary=True) as file:
        pq.write_table(pa.table(columns, schema=schema), file)
    return count


@dataclass(frozen=True)
class TrainingPair:
    """What generator training reads: the bonito prompt, the target and the pair's task type."""

    source: str
    target: str
    task_type: str


def load_pairs(data: str, split: str = "train") -> list[TrainingPair]:
    """Pairs from `bonito ctga build` output (JSONL or Parquet), a saved `datasets` folder or a
    hub dataset such as ctga-v1: `source`/`target` columns (or `input`/`output`); the task type
    is read from the source prompt's `<|tasktype|>` line."""
    pairs = []
    for number, row in enumerate(read_rows(data, split=split), start=1):
        source, target = row.get("source", row.get("input")), row.get("target", row.get("output"))
        task_type = _prompt_task_type(source) if isinstance(source, str) else None
        if not isinstance(source, str) or not isinstance(target, str) or task_type is None:
            raise BonitoError(
                f"Row {number} of '{data}' is not a bonito training pair: it needs a `source` "
                "(a bonito prompt, from `bonito ctga build`) and a `target` text."
            )
        pairs.append(TrainingPair(source, target, task_type))
    if not pairs:
        raise BonitoError(f"'{data}' holds no training pairs.")
    return pairs


def _prompt_task_type(prompt: str) -> str | None:
    head, _, rest = prompt.partition("\n")
    name, _, _ = rest.partition("\n")
    return name if head == TASKTYPE and name.strip() else None


def load_ctga(name: str = CTGA_HUB_ID, split: str = "train"):
    """The published ctga-v1 (or another dataset of pairs) through `datasets.load_dataset`."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as error:
        raise BonitoError(
            f"The dataset '{name}' (split '{split}') could not be loaded from the hub "
            f"({_line(error)}); check the name and the network, or save it with save_to_disk "
            "where there is internet access and load the folder."
        ) from error
