"""The drop-in Python API: `Bonito(model).generate_tasks(dataset, context_col, task_type, ...)`."""

from __future__ import annotations

from typing import Any

import datasets
from tqdm.auto import tqdm

from bonito.engines import load_engine
from bonito.errors import BonitoError
from bonito.generate.judge import Request, Summary, generate_samples
from bonito.models import DEFAULT_GENERATOR
from bonito.prompt.sampling import SamplingParams, derive_seed
from bonito.prompt.task_types import load_declared_task_types, resolve_task_type


class Bonito:
    """A bonito generator. `engine` is "auto", "transformers" or "vllm"; `engine_kwargs` go to
    the backend (for vLLM exactly `vllm.LLM`'s keyword arguments, as in the original library).
    A generator trained by `bonito train` on new task types brings them along."""

    def __init__(
        self, model: str = DEFAULT_GENERATOR, engine: str = "auto", **engine_kwargs: Any
    ) -> None:
        load_declared_task_types(model)
        self.engine = load_engine(model, engine, **engine_kwargs)
        self.model = model
        self.last_summary: Summary | None = None

    def generate_tasks(
        self,
        text_dataset: datasets.Dataset | dict[str, list] | list[dict] | list[str],
        context_col: str,
        task_type: str,
        sampling_params: SamplingParams | dict | Any = None,
        *,
        with_metadata: bool = False,
        progress: bool = False,
    ) -> datasets.Dataset:
        """One row per parseable sample, in the dataset's row order, with columns `input` and
        `output` (with n > 1 every sample is its own row), exactly as the original library;
        `with_metadata` adds context, task_type, row and sample_index. `text_dataset` may also
        be a plain list of passages (then `context_col` names nothing)."""
        kind = resolve_task_type(task_type)
        sampling = SamplingParams.coerce(sampling_params)
        contexts = _column(text_dataset, context_col)
        requests = [
            Request(text, kind, row, _seed(sampling, row), {"row": row})
            for row, text in enumerate(contexts)
        ]
        self.last_summary = summary = Summary(contexts=len(requests))
        accepted = []
        with tqdm(total=len(requests), desc="contexts", disable=not progress) as bar:
            for group in generate_samples(self.engine, requests, sampling):
                summary.add(group)
                bar.update(len(group.samples) // sampling.n + len(group.failed))
                accepted += [s for s in group.samples if s.status == "accepted"]
        accepted.sort(key=lambda s: (s.request.key, s.index))  # the dataset's row order
        rows = [_row(s, with_metadata) for s in accepted]
        columns = ["input", "output"] + (
            ["context", "task_type", "row", "sample_index"] if with_metadata else []
        )
        return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns})


def _seed(sampling: SamplingParams, row: int) -> int | None:
    """A row's own seed, so that its samples do not depend on the rows sent with it."""
    return None if sampling.seed is None else derive_seed(sampling.seed, row)


def _row(sample, with_metadata: bool) -> dict[str, Any]:
    row = {"input": sample.task.input, "output": sample.task.output}
    if with_metadata:
        request = sample.request
        row |= {
            "context": request.context,
            "task_type": request.task_type.short,
            "row": request.key,
            "sample_index": sample.index,
        }
    return row


def _column(data: Any, name: str) -> list[str]:
    """The contexts: a list of passages as they are, else the column `name` of a Dataset, a
    DataFrame, a dict of lists or a list of dicts; refusing another shape, a missing column
    or an empty context up front."""
    if isinstance(data, list) and data and all(isinstance(row, str) for row in data):
        return _texts(data, "Passage {row}")
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        data = datasets.Dataset.from_list(data)
    if not hasattr(data, "column_names") and not hasattr(data, "keys"):  # a DataFrame has keys
        shape = "list of mixed rows" if isinstance(data, list) else type(data).__name__
        raise BonitoError(
            f"text_dataset is a {shape}; pass a datasets.Dataset, a pandas DataFrame, a dict "
            "of lists, a list of dicts or a list of passages (strings)."
        )
    columns = list(data.column_names if hasattr(data, "column_names") else data.keys())
    if name not in columns:
        raise BonitoError(
            f"The dataset has no column '{name}' (it has: {', '.join(columns) or 'none'}); "
            "pass the column that holds the passages as context_col."
        )
    return _texts(list(data[name]), f"Row {{row}} of column '{name}'")


def _texts(values: list[Any], where: str) -> list[str]:
    """`values`, after checking that each is non-empty text (`where` names one by its row)."""
    for row, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise BonitoError(
                f"{where.format(row=row)} is {value!r}: every context must be non-empty text; "
                "drop or fill such rows first (e.g. dataset.filter)."
            )
    return values
