"""Readers for the inputs `bonito generate` takes, on real files written in a temp dir."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bonito import BonitoError
from bonito.run import read_contexts
from bonito.sources import read_documents

ROWS = [{"text": "First passage."}, {"text": "Second passage."}, {"text": "  "}]


def texts(docs):
    return [d.text for d in docs]


def test_jsonl_csv_tsv_parquet_json_give_the_same_rows(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "a.csv").write_text("id,text\n1,First passage.\n2,Second passage.\n3,  \n")
    (tmp_path / "a.tsv").write_text("text\tid\nFirst passage.\t1\nSecond passage.\t2\n  \t3\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.csv", "a.tsv", "a.parquet"):
        docs = list(read_documents([tmp_path / name]))
        assert texts(docs) == ["First passage.", "Second passage.", "  "], name
        assert [d.metadata["row"] for d in docs] == [1, 2, 3]
        assert docs[1].source == str(tmp_path / name)


def test_text_files_split_into_paragraphs(tmp_path):
    (tmp_path / "notes.txt").write_text("Para one\nstill one.\n\n \nPara two.\n")
    docs = list(read_documents([tmp_path / "notes.txt"]))
    assert texts(docs) == ["Para one\nstill one.", "Para two."]
    assert [d.metadata["paragraph"] for d in docs] == [1, 2]


def test_saved_dataset_folder_and_plain_folder(tmp_path):
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "saved"))
    assert texts(read_documents([tmp_path / "saved"])) == ["First passage.", "Second passage."]
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(ROWS[:1]), "train": datasets.Dataset.from_list(ROWS)}
    ).save_to_disk(str(tmp_path / "dd"))
    assert texts(read_documents([tmp_path / "dd"], split="test")) == ["First passage."]
    with pytest.raises(BonitoError, match="has no split 'dev'; choose one of test, train"):
        list(read_documents([tmp_path / "dd"], split="dev"))
    folder = tmp_path / "corpus" / "sub"
    folder.mkdir(parents=True)
    (folder / "b.txt").write_text("Bee.")
    (folder.parent / "a.md").write_text("Ay.")
    (folder / "skip.bin").write_bytes(b"\0")
    assert texts(read_documents([tmp_path / "corpus"])) == ["Ay.", "Bee."]


def test_context_column_and_limit(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"passage": "p1"}\n{"passage": "p2"}\n{"passage": "p3"}\n')
    assert texts(read_documents([tmp_path / "q.jsonl"], "passage", limit=2)) == ["p1", "p2"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.jsonl", '{"body": "x"}\n', "m.jsonl row 1 has no field 'text' \\(it has: body\\)"),
        ("m.csv", "body\nx\n", "m.csv row 1 has no field 'text' \\(it has: body\\)"),
        ("bad.jsonl", '{"text": "ok"}\n{"text": \n', "bad.jsonl line 2 is not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "list.jsonl row 1 is not a JSON object"),
        ("doc.xyz", "hello", "unknown file type '.xyz'"),
        ("latin.txt", "caf\xe9".encode("latin-1"), "latin.txt is not UTF-8 text"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BonitoError, match=message):
        list(read_documents([path]))


def test_parquet_missing_column(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"body": "x"}]), tmp_path / "p.parquet")
    with pytest.raises(BonitoError, match="has no column 'text' \\(it has: body\\)"):
        list(read_documents([tmp_path / "p.parquet"]))


def test_missing_input_and_offline_hub_dataset(tmp_path, monkeypatch):
    with pytest.raises(BonitoError, match="'./nope.jsonl' does not exist"):
        list(read_documents(["./nope.jsonl"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BonitoError, match="Could not load the dataset 'someone/absent'"):
        list(read_documents(["someone/absent"]))


def test_read_contexts_skips_and_counts_empty_ones(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    contexts, skipped = read_contexts([tmp_path / "a.jsonl"], "text")
    assert [c for c, _ in contexts] == ["First passage.", "Second passage."]
    assert contexts[1][1] == {"file": str(tmp_path / "a.jsonl"), "row": 2}
    assert skipped == [f"{tmp_path / 'a.jsonl'}:3"]
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(BonitoError, match="No text to generate from .* \\(1 empty contexts\\)"):
        read_contexts([tmp_path / "empty.jsonl"], "text")
