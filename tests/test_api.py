"""The drop-in API: Bonito(...).generate_tasks(...) on the tiny generator."""

import datasets
import pytest

from bonito import Bonito, BonitoError, SamplingParams

PASSAGES = [
    "The library opens at nine and closes at six on weekdays.",
    "Tomatoes need full sun and regular watering to grow well in a garden.",
    "The orchestra rehearsed the new symphony for three weeks before the premiere.",
    "Electric cars are cheaper to run but cost more to buy than petrol cars.",
]


@pytest.fixture(scope="module")
def bonito(tiny_model):
    return Bonito(str(tiny_model), engine="transformers")


@pytest.fixture
def dataset():
    return datasets.Dataset.from_dict({"input": PASSAGES, "id": list(range(len(PASSAGES)))})


def test_columns_are_exactly_input_and_output(bonito, dataset):
    tasks = bonito.generate_tasks(
        dataset,
        context_col="input",
        task_type="nli",
        sampling_params=SamplingParams(max_tokens=96, seed=0),
    )
    assert isinstance(tasks, datasets.Dataset)
    assert tasks.column_names == ["input", "output"]
    assert len(tasks) == bonito.last_summary.accepted >= 3
    assert all(r["input"].strip() and r["output"].strip() for r in tasks)
    assert not any("{{context}}" in r["input"] for r in tasks)


def test_n_keeps_every_sample_and_metadata(bonito, dataset):
    tasks = bonito.generate_tasks(
        dataset, "input", "ynqa", {"n": 3, "max_tokens": 96, "seed": 1}, with_metadata=True
    )
    summary = bonito.last_summary
    assert summary.samples == 3 * len(PASSAGES)
    assert len(tasks) == summary.accepted == summary.samples - sum(summary.rejected.values())
    assert tasks.column_names == ["input", "output", "context", "task_type", "row", "sample_index"]
    assert set(tasks["sample_index"]) <= {0, 1, 2} and len(set(tasks["sample_index"])) > 1
    assert set(tasks["task_type"]) == {"ynqa"}
    for row in tasks:
        assert row["context"] == PASSAGES[row["row"]]


def test_same_seed_same_dataset(bonito, dataset):
    sampling = SamplingParams(max_tokens=64, seed=5)
    first = bonito.generate_tasks(dataset, "input", "qa", sampling)
    assert bonito.generate_tasks(dataset, "input", "qa", sampling).to_list() == first.to_list()


def test_accepts_plain_lists_and_dicts(bonito):
    rows = [{"text": p} for p in PASSAGES[:2]]
    assert bonito.generate_tasks(rows, "text", "summarization", {"max_tokens": 8}).column_names == [
        "input",
        "output",
    ]
    assert bonito.generate_tasks(
        {"text": PASSAGES[:1]}, "text", "te", {"max_tokens": 8}
    ).column_names == ["input", "output"]


def test_a_plain_list_of_passages_is_the_contexts(bonito):
    tasks = bonito.generate_tasks(
        PASSAGES[:2], "text", "ynqa", {"max_tokens": 32, "seed": 0}, with_metadata=True
    )
    assert set(tasks["context"]) <= set(PASSAGES[:2])
    assert bonito.last_summary.contexts == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("One passage.", "text_dataset is a str; pass a datasets.Dataset, a pandas DataFrame, "),
        ([{"text": "A."}, "B."], "text_dataset is a list of mixed rows; pass "),
        (["A passage.", " "], "Passage 1 is ' ': every context must be non-empty text"),
        (42, "text_dataset is a int; pass .* or a list of passages \\(strings\\)"),
    ],
)
def test_another_shape_is_refused_with_the_shapes_taken(bonito, data, message):
    with pytest.raises(BonitoError, match=message):
        bonito.generate_tasks(data, "text", "ynqa")


@pytest.mark.parametrize(
    ("data", "column", "task_type", "sampling", "message"),
    [
        ({"input": PASSAGES}, "text", "nli", None, "no column 'text' \\(it has: input\\)"),
        ({"input": ["ok", "  "]}, "input", "nli", None, "Row 1 of column 'input' is '  '"),
        ({"input": ["ok", None]}, "input", "nli", None, "Row 1 of column 'input' is None"),
        ({"input": PASSAGES}, "input", "nil", None, "Unknown task type 'nil'"),
        ({"input": PASSAGES}, "input", "nli", {"max_tokens": 0}, "max_tokens must be"),
        ({"input": PASSAGES}, "input", "nli", {"temperature": -1}, "temperature must be"),
        (
            {"input": PASSAGES},
            "input",
            "nli",
            {"max_tokens": 5000},
            "max_tokens 5000 do not fit the model's window of 4096 tokens",
        ),
    ],
)
def test_bad_input_fails_before_generating(bonito, data, column, task_type, sampling, message):
    with pytest.raises(BonitoError, match=message):
        bonito.generate_tasks(data, column, task_type, sampling)


def test_every_public_name_resolves():
    import bonito

    namespace: dict = {}
    exec("from bonito import *", namespace)
    assert {name for name in bonito.__all__ if name not in namespace} == set()
