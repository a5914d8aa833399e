"""Typed results: trainings and `adapt` return dataclasses, written as the JSON they always were."""

from dataclasses import asdict

from bonito.adapt.adaptation import AdaptResult, results_markdown, results_table
from bonito.train.trainer import TrainingSummary

WRITTEN = {  # a target's training_summary.json, as `finetune` wrote it before it was typed
    "output": "out",
    "tasks": "runs/demo",
    "task_types": {"ynqa": 3},
    "pairs": {"train": 3, "skipped": {}},
    "train_tokens": 120,
    "steps": 2,
    "resumed_from": None,
    "seconds": 1.5,
    "tokens_per_second": 80.0,
    "train_loss": [[1, 2.5], [2, 2.0]],
    "eval_loss": [],
    "final_eval": {},
}


def test_a_training_summary_reads_and_writes_its_json():
    summary = TrainingSummary.from_dict(WRITTEN)
    assert summary.facts == {"tasks": "runs/demo", "task_types": {"ynqa": 3}}
    assert summary.train_loss == [(1, 2.5), (2, 2.0)] and summary.generations is None
    assert summary.to_dict() == WRITTEN | {"train_loss": [(1, 2.5), (2, 2.0)], "generations": None}
    assert TrainingSummary.from_dict(summary.to_dict()) == summary


def test_the_adapt_table_is_typed_and_results_json_keeps_its_keys():
    def evaluation(accuracy: float) -> dict:
        return {
            "task_type": "yes-no question answering",
            "examples": 3,
            "templates": [{"template": "a"}, {"template": "b"}],
            "average": {"accuracy": accuracy},
        }

    settings = {"base_model": "m", "decontamination": {"against": "labelled.jsonl"}}
    evaluations = {"zero-shot": evaluation(0.5), "bonito": evaluation(0.75)}
    table = results_table(evaluations, settings)
    assert isinstance(table, AdaptResult)
    assert [(row.label, row.scores["accuracy"]) for row in table.rows] == [
        ("zero-shot", 0.5),
        ("bonito", 0.75),
    ]
    written = asdict(table)
    assert list(written) == ["task_type", "examples", "templates", "metrics", "rows", "settings"]
    assert written["rows"][1] == {
        "name": "bonito",
        "label": "bonito",
        "scores": {"accuracy": 0.75},
        "evaluation": "evaluations/bonito.json",
    }
    assert "| bonito | 75.0 |" in results_markdown(table)
