"""Readers on real files written in a temp dir: every format, every kind of broken input."""

import csv
import json
import os
import signal
import sys
import tempfile
import zlib
from pathlib import Path

import datasets
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ARTICLE, NEEDS_DOCS, write_docx, write_html, write_pdf

from bonito import BonitoError
from bonito.read.sources import SUFFIXES, Document, Skip, fingerprint, read_documents

ROWS = [{"text": "First passage."}, {"text": "Second passage."}, {"text": "  "}]


def texts(items):
    return [item.text for item in items if isinstance(item, Document)]


def skips(items):
    return {(Path(s.source).name, s.reason): s.detail for s in items if isinstance(s, Skip)}


def add_image_page(pdf):
    """A page as a scanner makes it: an image, no text."""
    pymupdf = pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 16, 16), False)
    pixmap.clear_with(180)
    pdf.new_page().insert_image(pymupdf.Rect(72, 72, 400, 400), pixmap=pixmap)


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


def test_a_text_file_is_its_text_as_python_reads_it(tmp_path):
    """Indentation (code blocks), spaces and blank lines are kept, line ends made \\n: the text is
    what open() reads, so that a context's span indexes the file."""
    path = tmp_path / "notes.md"
    path.write_bytes(
        b"# Title  \r\n\r\nLoad it:\n\n    >>> yaml.load(stream)\n      - indented: 1\n\n\n"
        b"Para\tone\n still one.\rPara two.\n"
    )
    [doc] = read_documents([path])
    assert doc.text == path.read_text(encoding="utf-8")
    assert "\n    >>> yaml.load(stream)\n      - indented: 1\n" in doc.text
    assert "\r" not in doc.text and doc.id == doc.source == str(path)


def test_text_files_without_a_suffix_and_other_text_suffixes_are_read(tmp_path):
    names = ["README", "copyright", "Apache-2.0", "README.Debian", "LICENSE-MIT", "guide.rst"]
    names += ["notes.markdown", "plain.text"]
    for name in names:
        (tmp_path / name).write_text(f"The text of {name}.\n")
    (tmp_path / "program").write_bytes(b"\x7fELF\x02\x01\x01\0\0\0")
    (tmp_path / "README.gz").write_bytes(b"\x1f\x8b\x08\0")
    (tmp_path / "style.css").write_text("body { color: red; }\n")
    items = list(read_documents([tmp_path]))
    assert sorted(texts(items)) == sorted(f"The text of {n}.\n" for n in names)
    assert skips(items) == {
        ("program", "binary"): "is binary data, not text (it holds NUL bytes)",
        ("README.gz", "unsupported_type"): (
            f"is not one of {', '.join(SUFFIXES)} (name a plain text file .txt to read it)"
        ),
        ("style.css", "unsupported_type"): (
            f"is not one of {', '.join(SUFFIXES)} (name a plain text file .txt to read it)"
        ),
    }


@pytest.mark.parametrize("delimiter", [";", "\t", "|", ","])
def test_the_delimiter_of_a_csv_file_is_sniffed(tmp_path, delimiter):
    rows = [("1", "Erste Zeile, mit Komma."), ("2", 'Zweite; mit "Anführung".')]
    path = tmp_path / "excel.csv"
    with path.open("w", newline="", encoding="cp1252") as file:
        csv.writer(file, delimiter=delimiter).writerows([("id", "text"), *rows])
    assert texts(read_documents([path])) == [text for _, text in rows]


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
    scanned = pymupdf.open()
    add_image_page(scanned)
    scanned.save(bad / "scanned.pdf")
    blank = pymupdf.open()
    blank.new_page()
    blank.save(bad / "blank.pdf")
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
        ("locked.pdf", "encrypted"): "is encrypted; decrypt it first (e.g. `qpdf --decrypt`)",
        ("scanned.pdf", "no_text_layer"): (
            "has no text layer (scanned pages?); run OCR on it first"
        ),
        ("blank.pdf", "empty"): "has no text",
        ("corrupt.docx", "corrupt"): (
            "is not a readable .docx (damaged, password-protected or another format)"
        ),
        ("junk.txt", "binary"): "is binary data, not text (it holds NUL bytes)",
        ("empty.txt", "empty"): "has no text",
        ("mixed.txt", "encoding"): "is not valid utf-8 text (at byte 263)",
        ("one-line.txt", "line_too_long"): (
            "has a line longer than 8,388,608 bytes; it is data, not running text"
        ),
        ("script.html", "empty"): "has no main text (only scripts and markup, or not HTML)",
        ("rows.jsonl", "invalid_json"): "line 2 is not valid JSON (Expecting value at column 10)",
        ("rows.jsonl", "not_an_object"): "line 3 is not a JSON object with fields",
        ("rows.jsonl", "missing_field"): (
            "line 4 has no field 'text' (it has: body); name the text field with "
            "text_field (--text-field)"
        ),
        ("rows.jsonl", "not_text"): "line 5 holds a int, not text",
        ("rows.jsonl", "encoding"): "line 6 is not valid utf-8 (invalid continuation byte)",
        ("long.jsonl", "line_too_long"): "line 1 is longer than 8,388,608 bytes",
        ("cols.csv", "missing_field"): (
            "has no column 'text' (it has: body); name the text column with "
            "text_field (--text-field)"
        ),
        ("cols.parquet", "missing_field"): (
            "has no column 'text' (it has: body); name the text column with "
            "text_field (--text-field)"
        ),
        ("broken.json", "invalid_json"): (
            "is not valid JSON (Expecting value at line 1, column 16)"
        ),
        ("data.bin", "unsupported_type"): (
            "is not one of .jsonl, .json, .csv, .tsv, .parquet, .txt, .text, .md, .markdown, .rst, "
            ".html, .htm, .pdf, .docx (name a plain text file .txt to read it)"
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
        (
            "dd",
            "missing_split",
        ): "has no split 'dev'; choose one of test, train with split (--split)"
    }
    assert skips(read_documents([tmp_path / "dd"], "body")) == {
        ("dd", "missing_field"): (
            "has no column 'body' (it has: text); name the text column with "
            "text_field (--text-field)"
        )
    }


def test_fingerprint_changes_with_the_files_read_and_only_those(tmp_path):
    from bonito.read.sources import fingerprint

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


def test_a_scanned_page_inside_a_pdf_is_a_skip_of_its_own_and_in_no_page_range(tmp_path):
    pymupdf = pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "Page one has text.")
    add_image_page(pdf)
    pdf.new_page()  # a blank page: nothing to read, nothing to report
    pdf.new_page().insert_text((72, 72), "Page four has text.")
    pdf.save(tmp_path / "partly-scanned.pdf")
    skip, doc = read_documents([tmp_path / "partly-scanned.pdf"])
    assert (skip.reason, skip.detail) == (
        "no_text_layer",
        "page 2 has no text layer (scanned?); run OCR on it first",
    )
    assert doc.text == "Page one has text.\n\nPage four has text."
    assert doc.metadata["pages"] == [[1, 0], [4, doc.text.index("Page four")]]


def test_html_soft_line_breaks_stay_inside_their_paragraph(tmp_path):
    pytest.importorskip("trafilatura", reason=NEEDS_DOCS)
    (tmp_path / "page.html").write_text(
        "<html><head><title>Floating point</title></head><body><main><article>"
        '<h1>Floating-Point Arithmetic<a class="headerlink" href="#fp">¶</a></h1>\n'
        "<p>Stop at any finite number of bits, and you get an approximation.  On most\n"
        "machines today, floats are approximated using a binary fraction; in the case of\n"
        "<code>1/10</code>, the fraction is <code>3602879701896397 / 2 ** 55</code>, which is\n"
        "close to but not exactly equal to the true value.</p>\n"
        "<p>Values are displayed rounded.<br>This line follows a hard break.</p>\n"
        "<pre>&gt;&gt;&gt; 0.1\n0.1000000000000000055511151231257827021181583404541015625\n"
        "    indented line\n</pre>\n"
        "<ul><li>first item\nover two lines</li><li>second item</li></ul>"
        "</article></main></body></html>",
        encoding="utf-8",
    )
    [doc] = read_documents([tmp_path / "page.html"])
    assert doc.text.split("\n\n") == [
        "Floating-Point Arithmetic",
        "Stop at any finite number of bits, and you get an approximation. On most machines "
        "today, floats are approximated using a binary fraction; in the case of 1/10, the "
        "fraction is 3602879701896397 / 2 ** 55, which is close to but not exactly equal to "
        "the true value.",
        "Values are displayed rounded.\nThis line follows a hard break.",
        ">>> 0.1\n0.1000000000000000055511151231257827021181583404541015625\n    indented line",
        "- first item over two lines\n- second item",
    ]


@pytest.mark.parametrize(
    "mistyped",
    ["corpus/mdd", "corpus/", "nonexistent/", "pm/nope.jsonl", "notes/report.pdf", "nope"],
)
def test_a_mistyped_local_path_is_an_error_at_once_never_a_hub_lookup(
    tmp_path, monkeypatch, mistyped
):
    (tmp_path / "corpus").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub lookup"))
    if mistyped == "corpus/":
        mistyped = "corpus/nothing/"
    with pytest.raises(BonitoError) as error:
        read_documents([mistyped])
    assert str(error.value) == (
        f"The input '{mistyped}' does not exist; give a file, a folder or a hub dataset id "
        "(owner/name)."
    )


def test_a_file_given_twice_or_also_inside_a_folder_given_is_read_once(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Alpha.")
    (tmp_path / "docs" / "b.txt").write_text("Beta.")
    monkeypatch.chdir(tmp_path)
    inputs = ["docs/b.txt", "./docs/b.txt", tmp_path / "docs" / "b.txt", "docs", "docs/"]
    items = list(read_documents(inputs))
    assert [(d.id, d.text) for d in items] == [("docs/b.txt", "Beta."), ("docs/a.txt", "Alpha.")]


def test_globs_that_match_nothing_and_globs_without_a_folder_say_so(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.pdf").write_bytes(b"%PDF-1.7")
    (tmp_path / "empty").mkdir()
    items = list(read_documents([tmp_path / "docs", tmp_path / "empty"], include=["*.PDF"]))
    assert skips(items) == {
        ("docs", "no_match"): "has no file that matches include (--include) '*.PDF' (case counts)",
        ("empty", "no_match"): "has no file that matches include (--include) '*.PDF' (case counts)",
    }
    assert skips(read_documents([tmp_path / "docs"], exclude=["*.pdf", "*.txt"])) == {
        ("docs", "no_match"): "has no file left by exclude (--exclude) '*.pdf' '*.txt'"
    }
    assert skips(read_documents([tmp_path / "empty"])) == {
        ("empty", "empty"): "has no files (hidden ones are not read)"
    }
    with pytest.raises(
        BonitoError, match=r"^include \(--include\) picks files inside folders, and no input"
    ):
        read_documents([tmp_path / "docs" / "a.pdf"], include=["*.pdf"])


def test_a_split_that_a_saved_dataset_does_not_have_is_a_skip(tmp_path):
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(
        str(tmp_path / "only-test")
    )
    assert texts(read_documents([tmp_path / "one"])) == ["First passage.", "Second passage."]
    assert texts(read_documents([tmp_path / "only-test"])) == ["First passage."]
    assert skips(
        read_documents([tmp_path / "one", tmp_path / "only-test"], split="validation")
    ) == {
        ("one", "missing_split"): (
            "is one dataset without splits, so it has no split 'validation'; leave split "
            "(--split) out "
            "to read it"
        ),
        ("only-test", "missing_split"): (
            "has no split 'validation'; choose one of test with split (--split)"
        ),
    }


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "corpus/mdd", "-t", "ynqa", "-o", "out"],
        ["chunk", "corpus/mdd", "-o", "out/contexts.jsonl"],
        ["adapt", "--unlabelled", "pm/nope.jsonl", "--labelled", "corpus/a.jsonl", "-t", "ynqa"]
        + ["-o", "out"],
        ["finetune", "nope", "-o", "out"],
    ],
)
def test_commands_refuse_a_mistyped_path_before_writing_anything(
    tmp_path, monkeypatch, capsys, tiny_model, command
):
    from bonito.cli import main

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text('{"question": "q", "final_decision": "yes"}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub lookup"))
    model = ["--base-model", tiny_model] if command[0] == "finetune" else ["--model", tiny_model]
    if command[0] == "adapt":
        model = ["--generator", tiny_model, "--base-model", tiny_model]
    monkeypatch.setattr(sys, "argv", ["bonito", *map(str, command + model)])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code != 0
    assert "does not exist; give a file, a folder or a hub dataset id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pdf_running_headers_page_numbers_and_contents_leaders_are_left_out(tmp_path):
    pymupdf = pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    pdf = pymupdf.open()
    contents = pdf.new_page()
    contents.insert_text((72, 72), "Contents")
    contents.insert_text(
        (72, 120), "1 The depot . . . . . . . . . . . . 2\n2 The library . . . . . . . 3"
    )
    for number, paragraph in enumerate(ARTICLE, start=2):
        page = pdf.new_page()
        page.insert_text((72, 40), f"Chapter {number - 1}: Depot minutes")
        page.insert_textbox(pymupdf.Rect(72, 100, 500, 400), paragraph)
        page.insert_text((300, 800), str(number))
    pdf.save(tmp_path / "report.pdf")
    [doc] = read_documents([tmp_path / "report.pdf"])
    assert doc.text == "\n\n".join(["Contents", *ARTICLE])
    assert [number for number, _ in doc.metadata["pages"]] == [1, 2, 3, 4]


def test_a_json_row_with_half_a_character_is_a_skipped_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "Before."}\n{"text": "cut \\ud83d in half"}\n{"text": "After."}\n')
    items = list(read_documents([path]))
    assert texts(items) == ["Before.", "After."]
    assert skips(items) == {
        ("rows.jsonl", "encoding"): (
            "line 2 holds half of a character (a lone surrogate, \\ud83d, at character 4); "
            "it cannot be written as UTF-8"
        )
    }


def test_pipes_and_devices_are_skipped_never_opened(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("Read me.")
    os.mkfifo(folder / "b.jsonl")
    (folder / "null.txt").symlink_to("/dev/null")
    os.mkfifo(tmp_path / "alone.txt")
    signal.signal(signal.SIGALRM, _hung)  # a pipe opened for reading waits for a writer
    signal.alarm(20)
    try:
        items = list(read_documents([folder, tmp_path / "alone.txt"]))
        fingerprint([folder, tmp_path / "alone.txt"])
    finally:
        signal.alarm(0)
    assert texts(items) == ["Read me."]
    assert skips(items) == {
        ("b.jsonl", "unsupported_type"): "is a named pipe, not a regular file; only files are read",
        ("null.txt", "unsupported_type"): (
            "is a character device, not a regular file; only files are read"
        ),
        ("alone.txt", "unsupported_type"): (
            "is a named pipe, not a regular file; only files are read"
        ),
    }


def _hung(*_):
    raise TimeoutError("reading hangs")


def test_one_bad_row_costs_that_row_only(tmp_path):
    (tmp_path / "nul.jsonl").write_bytes(
        b'{"text": "One."}\n{"text": "a raw \0 byte"}\n{"text": "Two, with \\u0000."}\n'
    )
    (tmp_path / "deep.jsonl").write_text(
        '{"text": "Three."}\n' + "[" * 200_000 + '\n{"text": "Four."}\n'
    )
    (tmp_path / "big.csv").write_text(f"id,text\n1,Five.\n2,{'x' * (10 * 2**20)}\n3,Six.\n")
    (tmp_path / "byte.csv").write_bytes(
        "id,text\n1,Nine ✓.\n".encode() + b"2,caf\xe9\n" + "3,Ten ✓.\n".encode()
    )
    items = list(read_documents([tmp_path]))
    assert texts(items) == [
        *("Five.", "Six.", "Nine ✓.", "Ten ✓."),
        *("Three.", "Four.", "One.", "Two, with \0."),
    ]
    assert skips(items) == {
        ("big.csv", "line_too_long"): "row 2 has a line longer than 8,388,608 bytes",
        ("byte.csv", "encoding"): "row 2 is not valid utf-8 (invalid continuation byte)",
        ("deep.jsonl", "invalid_json"): "line 2 is JSON nested too deeply to read",
        ("nul.jsonl", "invalid_json"): (
            "line 2 is not valid JSON (Invalid control character at at column 17)"
        ),
    }


def test_one_stray_byte_does_not_garble_the_utf8_text_of_a_file(tmp_path):
    pytest.importorskip("charset_normalizer", reason=NEEDS_DOCS)
    ascii_rows = b"".join(b'{"text": "Plain row %d."}\n' % n for n in range(2000))
    french = "Après la pluie, ça va très bien: café crème brûlée."
    rows = b'{"text": "Un caf\xe9."}\n' + ascii_rows + json.dumps({"text": french}).encode()
    (tmp_path / "rows.jsonl").write_bytes(rows + b"\n")
    (tmp_path / "notes.txt").write_bytes(
        b"Un caf\xe9.\n" + b"Plain line.\n" * 90_000 + french.encode()
    )
    csv_rows = b"".join(b"Plain row %d.\n" % n for n in range(5000))
    (tmp_path / "table.csv").write_bytes(b"text\nUn caf\xe9.\n" + csv_rows + f'"{french}"'.encode())
    table = texts(read_documents([tmp_path / "table.csv"]))
    items = list(read_documents([tmp_path / "notes.txt", tmp_path / "rows.jsonl"]))
    notes, first, *_, last = texts(items)
    assert notes.endswith("\n" + french) and notes.startswith("Un café.\n")
    assert (first, last) == ("Un café.", french)
    assert table[1:] == [*(f"Plain row {n}." for n in range(5000)), french]
    assert skips(items) == {}


def test_a_huge_document_is_read_up_to_a_limit_and_the_rest_is_a_skip(tmp_path, monkeypatch):
    pymupdf = pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    from bonito.read.sources import pdf, text

    monkeypatch.setattr(text, "MAX_CHARS", 100)
    monkeypatch.setattr(pdf, "MAX_CHARS", 10)
    (tmp_path / "big.txt").write_text("A line of thirty characters..\n" * 10)
    document = pymupdf.open()
    for number in range(1, 5):
        document.new_page().insert_text((72, 72), f"Page {number} says hello.")
    document.save(tmp_path / "big.pdf")
    items = list(read_documents([tmp_path]))
    assert texts(items) == ["Page 1 says hello.", "A line of thirty characters..\n" * 3]
    assert skips(items) == {
        ("big.pdf", "too_long"): (
            "pages 2-4 were not read: the pages before hold more than 10 characters; "
            "split the PDF to read the rest"
        ),
        ("big.txt", "too_long"): (
            "is longer than 100 bytes: its first 90 were read; split it into smaller files to "
            "read the rest"
        ),
    }


def pdf_by_hand(path: Path, page: bytes, contents: bytes, *others: bytes) -> Path:
    """A one-page PDF written by hand: the page's own entries (MediaBox, Resources), its
    contents stream, and more objects from number 5 on (1-4: catalog, pages, font, page)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /Contents 5 0 R %s >>" % page,
        contents,
        *others,
    ]
    data, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(data))
        data += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    table = b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    data += b"xref\n0 %d\n0000000000 65535 f \n%s" % (len(objects) + 1, table)
    data += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        data.index(b"xref"),
    )
    path.write_bytes(data)
    return path


def stream(data: bytes, entries: bytes = b"") -> bytes:
    return b"<< %s /Length %d >>\nstream\n%s\nendstream" % (entries, len(data), data)


def pdf_bomb(path: Path, characters: int) -> Path:
    """A one-page PDF of about 20 KB whose compressed drawing instructions inflate to
    `characters` characters of text, all drawn on the page."""
    line = b"(" + b"lorem ipsum dolor " * 5 + b") Tj 1 0 0 1 72 720 Tm "
    contents = zlib.compress(b"BT /F1 10 Tf " + line * (characters // 90) + b"ET", 9)
    page = b"/MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
    return pdf_by_hand(path, page, stream(contents, b"/Filter /FlateDecode"))


def pdf_of_forms(path: Path, levels: int, draws: int) -> Path:
    """A one-page PDF whose page draws a form `draws` times, which draws the next form as many
    times, `levels` forms deep; the last one writes a line of text."""
    form = b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << %s >>"
    draw = b"q /Fm#200 Do Q\n" * draws  # the name "Fm 0", escaped
    forms = [
        stream(draw, form % b"/XObject << /Fm#200 %d 0 R >>" % (number + 1))
        for number in range(6, 5 + levels)
    ]
    text = b"BT /F1 12 Tf 72 700 Td (words drawn by a form) Tj ET"
    forms.append(stream(text, form % b"/Font << /F1 3 0 R >>"))
    page = b"/MediaBox [0 0 612 792] /Resources << /XObject << /Fm#200 6 0 R >> >>"
    return pdf_by_hand(path, page, stream(draw), *forms)


def test_a_page_whose_forms_draw_forms_past_the_limit_is_not_read(tmp_path):
    """Four levels of forms, each drawn a hundred times: a 5 KB file that MuPDF would spend
    minutes on (10^8 lines of text). Three levels of ten are read."""
    pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    bomb = pdf_of_forms(tmp_path / "forms.pdf", levels=4, draws=100)
    assert bomb.stat().st_size < 10_000
    pdf_of_forms(tmp_path / "few.pdf", levels=3, draws=10)
    items = list(read_documents([tmp_path]))
    (read,) = [item for item in items if isinstance(item, Document)]
    assert read.source.endswith("few.pdf") and "words drawn by a form" in read.text
    assert skips(items) == {
        ("forms.pdf", "too_long"): "page 1 was not read: it runs 6,715,151,500 bytes of "
        "drawing instructions, more than 4,194,304 (no page of text needs as many)"
    }


def test_a_pdf_bomb_a_huge_page_or_a_huge_package_is_not_read(tmp_path, monkeypatch):
    pymupdf = pytest.importorskip("pymupdf", reason=NEEDS_DOCS)
    from bonito.read.sources import web, word

    bomb = pdf_bomb(tmp_path / "bomb.pdf", 5_000_000)
    assert bomb.stat().st_size < 30_000
    document = pymupdf.open(bomb)
    document.insert_page(-1, text="A page of plain text after the bomb.")
    document.save(tmp_path / "mixed.pdf")
    monkeypatch.setattr(web, "MAX_CHARS", 500)
    monkeypatch.setattr(word, "MAX_MARKUP", 1000)
    write_html(tmp_path / "page.html")
    write_docx(tmp_path / "report.docx")
    items = list(read_documents([tmp_path]))
    assert texts(items) == ["A page of plain text after the bomb."]
    oversized = "page 1 was not read: it runs 6,333,285 bytes of drawing instructions, more than "
    assert skips(items) == {
        ("bomb.pdf", "too_long"): oversized + "4,194,304 (no page of text needs as many)",
        ("mixed.pdf", "too_long"): oversized + "4,194,304 (no page of text needs as many)",
        ("page.html", "too_long"): (
            "is larger than 500 bytes; split it into smaller pages to read it"
        ),
        ("report.docx", "too_long"): skips(items)[("report.docx", "too_long")],
    }
    assert "bytes of document markup, more than 1,000" in skips(items)[("report.docx", "too_long")]
