"""Readers on real files written in a temp dir: every format, every kind of broken input."""

import json
import os
import sys
import tempfile
from pathlib import Path

import datasets
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bonito import BonitoError
from bonito.sources import Document, Skip, read_documents

ROWS = [{"text": "First passage."}, {"text": "Second passage."}, {"text": "  "}]
ARTICLE = [
    "The city council voted on Tuesday to turn the old railway depot into a public library, "
    "ending a debate that had run for more than six years.",
    "Work on the roof will start in the spring, and the architects expect the reading rooms "
    "to open to the public within two years of the first stone being laid.",
    "Local historians welcomed the decision, noting that the depot was one of the last "
    "buildings of its kind still standing in the region.",
]
NEEDS_DOCS = "needs the docs extra: pip install -e '.[docs]'"


def texts(items):
    return [item.text for item in items if isinstance(item, Document)]


def skips(items):
    return {(Path(s.source).name, s.reason): s.detail for s in items if isinstance(s, Skip)}


def write_pdf(path: Path) -> Path:
    """Two pages: a word hyphenated across lines, then a paragraph over lines and another."""
    pymupdf = pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "The council voted to restore the exam-\nple depot.")
    page = pdf.new_page()
    page.insert_textbox(pymupdf.Rect(72, 72, 300, 300), ARTICLE[1])  # wraps over lines
    page.insert_text((72, 400), "Local historians welcomed it.")
    pdf.set_metadata({"title": "Depot minutes"})
    pdf.save(path)
    return path


def write_docx(path: Path) -> Path:
    docx = pytest.importorskip("docx", reason=NEEDS_DOCS)
    document = docx.Document()
    document.core_properties.title = "Depot report"
    document.add_heading("The depot", level=1)
    document.add_paragraph(ARTICLE[0])
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("year", "visitors"), ("2024", "1,200")], strict=True):
        for cell, value in zip(row.cells, cells, strict=True):
            cell.text = value
    document.add_paragraph(ARTICLE[1])
    document.save(path)
    return path


def write_html(path: Path) -> Path:
    """An article inside the menus, banners and footers of a real news page."""
    paragraphs = "".join(f"<p>{p}</p>" for p in ARTICLE)
    path.write_text(
        "<html><head><title>Depot to become library | Town News</title></head><body>"
        '<nav><a href="/">Home</a> <a href="/sport">Sport</a> <a href="/weather">Weather</a></nav>'
        '<div class="cookie-banner">We use cookies to improve your experience. Accept all</div>'
        f"<main><article><h1>Depot to become library</h1>{paragraphs}</article></main>"
        "<aside><h3>Most read</h3><ul><li>Storm warning for the coast</li></ul></aside>"
        "<footer>Copyright 2024 Town News. Subscribe to our newsletter.</footer></body></html>",
        encoding="utf-8",
    )
    return path


def test_tables_give_the_same_rows_and_skip_empty_ones(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "a.csv").write_text("id,text\n1,First passage.\n2,Second passage.\n3,  \n")
    (tmp_path / "a.tsv").write_text("text\tid\nFirst passage.\t1\nSecond passage.\t2\n  \t3\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.csv", "a.tsv", "a.parquet"):
        items = list(read_documents([tmp_path / name]))
        assert texts(items) == ["First passage.", "Second passage."], name
        assert [d.metadata["row"] for d in items[:2]] == [1, 2]
        assert items[1].id == f"{tmp_path / name}:2" and items[1].source == str(tmp_path / name)
        where = "line 3" if name == "a.jsonl" else "row 3"
        assert skips(items) == {(name, "empty"): f"{where} has no text"}


def test_a_text_file_is_one_document_with_normalised_whitespace(tmp_path):
    (tmp_path / "notes.md").write_text(
        "# Title  \r\n\r\nPara\tone\n still one.\n\n\n \nPara two.\n"
    )
    [doc] = read_documents([tmp_path / "notes.md"])
    assert doc.text == "# Title\n\nPara one\nstill one.\n\nPara two."
    assert doc.id == doc.source == str(tmp_path / "notes.md")


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ("Le café crème était très apprécié.".encode("cp1252"), "café crème était très"),
        ("Привет, как дела? Всё хорошо, спасибо.".encode("cp1251"), "Всё хорошо"),
        ("\ufeffUTF-8 with a mark, naïve.".encode(), "UTF-8 with a mark, naïve."),
        ("Grüße aus München.".encode("utf-16"), "Grüße aus München."),
    ],
)
def test_text_encodings_are_detected(tmp_path, data, text):
    pytest.importorskip("charset_normalizer", reason=NEEDS_DOCS)
    (tmp_path / "t.txt").write_bytes(data)
    [doc] = read_documents([tmp_path / "t.txt"])
    assert text in doc.text and "\ufeff" not in doc.text


def test_pdf_keeps_pages_and_joins_hyphenated_words(tmp_path):
    [doc] = read_documents([write_pdf(tmp_path / "minutes.pdf")])
    assert doc.text == (
        f"The council voted to restore the example depot.\n\n{ARTICLE[1]}\n\n"
        "Local historians welcomed it."
    )
    second = doc.text.index(ARTICLE[1])
    assert doc.metadata == {"pages": [[1, 0], [2, second]], "title": "Depot minutes"}


def test_docx_reads_paragraphs_and_tables_in_order(tmp_path):
    [doc] = read_documents([write_docx(tmp_path / "report.docx")])
    assert doc.text.split("\n\n") == [
        "The depot",
        ARTICLE[0],
        "year | visitors\n2024 | 1,200",
        ARTICLE[1],
    ]
    assert doc.metadata == {"title": "Depot report"}


def test_html_keeps_the_article_and_drops_the_boilerplate(tmp_path):
    pytest.importorskip("trafilatura", reason=NEEDS_DOCS)
    [doc] = read_documents([write_html(tmp_path / "news.html")])
    for paragraph in ARTICLE:
        assert f"\n\n{paragraph}" in doc.text
    for boilerplate in ("Sport", "cookies", "Storm warning", "Copyright", "newsletter"):
        assert boilerplate not in doc.text
    assert doc.metadata["title"].startswith("Depot to become library")


def test_folders_saved_datasets_globs_and_hidden_files(tmp_path):
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "saved"))
    assert texts(read_documents([tmp_path / "saved"])) == ["First passage.", "Second passage."]
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(ROWS[:1]), "train": datasets.Dataset.from_list(ROWS)}
    ).save_to_disk(str(tmp_path / "corpus" / "dd"))
    folder = tmp_path / "corpus" / "sub"
    folder.mkdir()
    (folder / "b.txt").write_text("Bee.")
    (folder.parent / "a.md").write_text("Ay.")
    (folder.parent / ".hidden.txt").write_text("Hidden.")
    (folder / "image.png").write_bytes(b"\x89PNG")
    items = list(read_documents([tmp_path / "corpus"], split="test"))
    assert texts(items) == ["Ay.", "First passage.", "Bee."]
    assert list(skips(items)) == [("image.png", "unsupported_type")]
    only_text = read_documents([tmp_path / "corpus"], include=["*.txt", "*.md"], exclude=["sub/*"])
    assert texts(only_text) == ["Ay."]


def test_text_field_picks_the_column(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"passage": "p1"}\n{"passage": "p2", "text": "no"}\n')
    assert texts(read_documents([tmp_path / "q.jsonl"], "passage")) == ["p1", "p2"]


def test_every_bad_input_is_skipped_with_its_reason_and_the_rest_is_read(tmp_path):
    pymupdf = pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    pytest.importorskip("docx", reason=NEEDS_DOCS)
    pytest.importorskip("trafilatura", reason=NEEDS_DOCS)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8)
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "Secret.")
    pdf.save(bad / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw")
    blank = pymupdf.open()
    blank.new_page()
    blank.save(bad / "scanned.pdf")
    (bad / "corrupt.docx").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (bad / "junk.txt").write_bytes(bytes(range(256)) * 16)
    (bad / "empty.txt").write_bytes(b"")
    (bad / "mixed.txt").write_bytes("naïve café ".encode() * 20 + b"caf\xe9\n")
    (bad / "one-line.txt").write_bytes(b"x" * (50 * 2**20))
    (bad / "script.html").write_text("<html><head><script>var menu = 1;</script></head></html>")
    (bad / "rows.jsonl").write_bytes(
        b'{"text": "Good one."}\n{"text": \n[1, 2]\n{"body": "no text field"}\n'
        b'{"text": 42}\n{"text": "caf\xe9"}\n{"text": "na\xc3\xafve, still good."}\n'
    )
    (bad / "long.jsonl").write_bytes(b'{"text": "' + b"y" * (9 * 2**20) + b'"}\n{"text": "Ok."}\n')
    (bad / "cols.csv").write_text("body\nno text column\n")
    pq.write_table(pa.Table.from_pylist([{"body": "x"}]), bad / "cols.parquet")
    (bad / "broken.json").write_text('[{"text": "a"},')
    (bad / "data.bin").write_bytes(b"\0")
    items = list(read_documents([bad]))
    assert texts(items) == ["Ok.", "Good one.", "naïve, still good."]
    assert skips(items) == {
        ("corrupt.pdf", "corrupt"): "is not a readable PDF (damaged, or not a PDF)",
        ("locked.pdf", "encrypted"): "is encrypted; decrypt it first (e.g. qpdf --decrypt)",
        ("scanned.pdf", "empty"): "has no text layer (scanned pages?); run OCR on it first",
        ("corrupt.docx", "corrupt"): (
            "is not a readable .docx (damaged, password-protected or another format)"
        ),
        ("junk.txt", "binary"): "is binary data, not text (it holds NUL bytes)",
        ("empty.txt", "empty"): "has no text",
        ("mixed.txt", "encoding"): "is not valid utf-8 text (at byte 263)",
        ("one-line.txt", "line_too_long"): (
            "has a line of 52,428,800 bytes (the limit is 8,388,608); it is data, not running text"
        ),
        ("script.html", "empty"): "has no main text (only scripts and markup, or not HTML)",
        ("rows.jsonl", "invalid_json"): "line 2 is not valid JSON (Expecting value at column 10)",
        ("rows.jsonl", "not_an_object"): "line 3 is not a JSON object with fields",
        ("rows.jsonl", "missing_field"): (
            "line 4 has no field 'text' (it has: body); name the text field with --text-field"
        ),
        ("rows.jsonl", "not_text"): "line 5 holds a int, not text",
        ("rows.jsonl", "encoding"): "line 6 is not valid utf-8 (invalid continuation byte)",
        ("long.jsonl", "line_too_long"): "line 1 is longer than 8,388,608 bytes",
        ("cols.csv", "missing_field"): (
            "has no column 'text' (it has: body); name the text column with --text-field"
        ),
        ("cols.parquet", "missing_field"): (
            "has no column 'text' (it has: body); name the text column with --text-field"
        ),
        ("broken.json", "invalid_json"): (
            "is not valid JSON (Expecting value at line 1, column 16)"
        ),
        ("data.bin", "unsupported_type"): (
            "is not one of .jsonl, .json, .csv, .tsv, .parquet, .txt, .md, .html, .htm, .pdf, .docx"
        ),
    }


def test_an_unreadable_file_is_skipped(tmp_path):
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        os.chmod(folder, 0o755)
        secret = Path(folder) / "secret.txt"
        secret.write_text("Private.")
        secret.chmod(0o000)
        (Path(folder) / "open.txt").write_text("Public.")
        items = _read_as_unprivileged(Path(folder))
    assert texts(items) == ["Public."]
    assert skips(items) == {("secret.txt", "unreadable"): "cannot be read (Permission denied)"}


def _read_as_unprivileged(folder: Path) -> list:
    """read_documents(folder) as a user who may not read everything (root drops to nobody in a
    child process, since root may read any file)."""
    if os.geteuid() != 0:
        return list(read_documents([folder]))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            os.setgid(65534)
            os.setuid(65534)
            items = [(type(i).__name__, vars(i)) for i in read_documents([folder])]
            os.write(write, json.dumps(items).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        items = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return [{"Document": Document, "Skip": Skip}[kind](**fields) for kind, fields in items]


def test_a_missing_docs_extra_is_a_skip_that_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymupdf", None)
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.7")
    assert skips(read_documents([tmp_path / "a.pdf"])) == {
        ("a.pdf", "needs_extra"): "Reading PDF needs the 'pymupdf' package: "
        "pip install 'bonito[docs]'"
    }


def test_a_missing_input_fails_before_anything_is_read_and_a_hub_failure_is_a_skip(
    tmp_path, monkeypatch
):
    (tmp_path / "a.txt").write_text("A.")
    with pytest.raises(BonitoError, match="The input './nope.jsonl' does not exist"):
        read_documents([tmp_path / "a.txt", "./nope.jsonl"])
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import: set it here
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    [skip] = read_documents(["someone/absent"])
    assert (skip.source, skip.reason) == ("someone/absent", "unreadable")
    assert "could not be loaded (split 'train')" in skip.detail
    assert "save it with save_to_disk" in skip.detail


def test_saved_dataset_with_a_wrong_split_or_column_is_a_skip(tmp_path):
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(ROWS[:1]), "train": datasets.Dataset.from_list(ROWS)}
    ).save_to_disk(str(tmp_path / "dd"))
    assert skips(read_documents([tmp_path / "dd"], split="dev")) == {
        ("dd", "missing_split"): "has no split 'dev'; choose one of test, train with --split"
    }
    assert skips(read_documents([tmp_path / "dd"], "body")) == {
        ("dd", "missing_field"): (
            "has no column 'body' (it has: text); name the text column with --text-field"
        )
    }


def test_fingerprint_changes_with_the_files_read_and_only_those(tmp_path):
    from bonito.sources import fingerprint

    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("One passage.")
    (folder / "sub" / "b.md").write_text("Another passage.")
    first = fingerprint([folder, "owner/dataset"])
    assert first[1] == {"input": "owner/dataset", "hub": True}
    assert first[0]["bytes"] == len("One passage.") + len("Another passage.")
    (folder / ".hidden").write_text("not read")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("not read either")
    assert fingerprint([folder, "owner/dataset"]) == first
    (folder / "sub" / "b.md").write_text("Another passage!")
    assert fingerprint([folder])[0]["blake2b"] != first[0]["blake2b"]
    (folder / "sub" / "b.md").rename(folder / "sub" / "c.md")
    assert len({fingerprint([folder])[0]["blake2b"], first[0]["blake2b"]}) == 2
