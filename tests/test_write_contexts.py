"""`bonito chunk` is one library call: `write_contexts`, usable from Python as it is."""

import json

import pytest

from bonito.errors import BonitoError
from bonito.read.config import Chunking, Reading
from bonito.runs.run import write_contexts


def test_write_contexts_writes_the_contexts_and_the_skips_and_counts_them(tiny_model, tmp_path):
    texts = [f"Passage {i} says that the river floods every spring." for i in range(4)] + [""]
    inputs = tmp_path / "passages.jsonl"
    inputs.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    output = tmp_path / "out" / "contexts.jsonl"

    summary = write_contexts(
        output, str(tiny_model), [str(inputs)], Reading(limit=3), Chunking(min_tokens=4)
    )
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["text"] for line in lines] == texts[:3]
    assert (summary.documents, summary.contexts) == (3, 3)

    summary = write_contexts(
        output, str(tiny_model), [str(inputs)], chunking=Chunking(min_tokens=4)
    )
    assert summary.contexts == 4 and summary.skipped.total() == 1
    assert len((tmp_path / "out" / "skipped.jsonl").read_text().splitlines()) == 1
    with pytest.raises(BonitoError, match=r"^strict \(--strict\): 1 skipped"):
        write_contexts(
            output, str(tiny_model), [str(inputs)], chunking=Chunking(min_tokens=4), strict=True
        )
