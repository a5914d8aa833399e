"""Decontamination: runs of 13 words shared with the evaluation data, found in passages,
instructions and answers, on small made-up data and on PubMedQA, whose unlabelled passages are
the contexts of its labelled set."""

import json
import time
from pathlib import Path

import pytest

from bonito import BonitoError
from bonito.publish.decontamination import EvaluationData, file_texts, overlapping_tasks

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"{DATA} (the shared real data) is not on this machine"
)
ABSTRACT = (
    "Programmed cell death is the regulated death of cells within an organism, and the lace "
    "plant produces perforations in its leaves through it."
)


def words(count: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + count))


def test_a_run_of_13_words_overlaps_and_12_do_not():
    data = EvaluationData([words(40)], "eval")
    assert data.overlaps(f"before {words(13, start=20)} after")
    assert not data.overlaps(f"before {words(12, start=20)} after")
    assert not data.overlaps(words(13, start=35))  # runs past the end of the evaluation text


def test_case_punctuation_and_spacing_are_ignored():
    data = EvaluationData([ABSTRACT], "eval")
    shouted = ABSTRACT.upper().replace(" ", "  \n").replace(",", " ;")
    assert data.overlaps(f"Summary: {shouted}")
    assert not data.overlaps("The lace plant has leaves.")


def task(number: int, context: int, text: str, instruction: str = "Is it so?") -> dict:
    return {
        "id": f"{number}-0",
        "context_id": context,
        "context": text,
        "input": f"{text}\nQuestion: {instruction}",
        "output": "yes",
    }


def test_tasks_overlap_by_their_passage_or_by_their_own_words():
    data = EvaluationData([ABSTRACT, f"Question: {words(13, start=100)}"], "eval.jsonl")
    clean = words(30, start=500)
    tasks = [
        task(1, 0, f"Intro. {ABSTRACT}"),  # the passage holds an evaluation text
        task(2, 0, f"Intro. {ABSTRACT}", "Other question?"),
        task(3, 1, clean),  # clean passage, clean question
        task(4, 1, clean, words(13, start=100)),  # clean passage, copied question
        task(5, 2, words(30, start=900)),
    ]
    ids, found = overlapping_tasks(tasks, data)
    assert ids == {"1-0", "2-0", "4-0"}
    assert (found.passages, found.overlapping_passages) == (3, 1)
    assert (found.tasks, found.overlapping_tasks) == (5, 3)
    assert found.sentence() == (
        "1 of the 3 passages the tasks came from and 3 of the 5 tasks share a run of 13 words "
        "with eval.jsonl; those tasks were left out."
    )
    _, kept = overlapping_tasks(tasks, data, left_out=False)
    assert "were kept, as keep_contaminated (--keep-contaminated) asked." in kept.sentence()
    _, none = overlapping_tasks(tasks[2:3], data)
    assert none.sentence().endswith("0 of the 1 tasks share a run of 13 words with eval.jsonl.")


def test_evaluation_files_are_json_lines_or_plain_text(tmp_path):
    labelled = tmp_path / "eval.jsonl"
    records = [
        {"id": 1, "context": ABSTRACT, "choices": ["yes", "no"], "label": 0},
        {"nested": {"sections": ["short", words(13, start=50)]}},
    ]
    labelled.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert list(file_texts(labelled)) == [ABSTRACT, "yes", "no", "short", words(13, start=50)]
    data = EvaluationData.from_file(labelled)
    assert data.overlaps(words(13, start=50)) and data.name == "eval.jsonl"
    text = tmp_path / "eval.txt"
    text.write_text(f"{ABSTRACT}\n\n{{not json}}\n")
    assert list(file_texts(text)) == [text.read_text()]
    assert EvaluationData.from_file(text).overlaps(ABSTRACT)


def test_unusable_evaluation_files_are_one_clear_error(tmp_path):
    with pytest.raises(BonitoError, match="Cannot read the evaluation data"):
        EvaluationData.from_file(tmp_path / "missing.jsonl")
    short = tmp_path / "short.jsonl"
    short.write_text('{"question": "Is it?"}\n')
    with pytest.raises(BonitoError, match="holds no run of 13 words"):
        EvaluationData.from_file(short)
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(BonitoError, match="Cannot read the evaluation data"):
        EvaluationData.from_file(binary)


@needs_data
def test_pubmedqa_passages_overlap_exactly_the_labelled_test_contexts(tmp_path):
    labelled = [json.loads(line) for line in (DATA / "pubmedqa" / "pubmedqa_pqal.jsonl").open()]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in labelled if r["split"] == "test"))
    passages = [json.loads(line)["text"] for line in (DATA / "pubmedqa" / "passages.jsonl").open()]
    started = time.perf_counter()
    data = EvaluationData.from_file(test)
    overlapping = [text for text in passages if data.overlaps(text)]
    assert time.perf_counter() - started < 20
    contexts = {r["context"] for r in labelled if r["split"] == "test"}
    assert len(overlapping) == len(contexts) == 500
    assert set(overlapping) == contexts
