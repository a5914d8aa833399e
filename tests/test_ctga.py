"""ctga builder: promptsource templates + datasets -> bonito (source, target) training pairs."""

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from bonito.errors import BonitoError
from bonito.prompt.format import PIPE, PLACEHOLDER, build_prompt
from bonito.train.ctga import (
    DatasetSpec,
    Summary,
    build_ctga,
    load_annotations,
    load_ctga,
    load_specs,
    load_templates,
    parse_spec,
    write_pairs,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "promptsource-templates"
needs_shared = pytest.mark.skipif(
    not (SHARED / "squad" / "templates.yaml").is_file(),
    reason="shared promptsource templates are not available",
)

TEMPLATES_YAML = """\
dataset: toyqa
templates:
  id-yes-no: !Template
    answer_choices: No ||| Yes
    id: id-yes-no
    jinja: 'Passage: {{passage}}

      Question: {{question}}? ||| {{ answer_choices[label] }}'
    metadata: !TemplateMetadata
      original_task: true
    name: yes_no
    reference: ''
  id-no-passage: !Template
    answer_choices: null
    id: id-no-passage
    jinja: 'Question: {{question}}? ||| {{ title }}'
    metadata: !TemplateMetadata
      original_task: false
    name: no_passage
    reference: ''
  id-empty: !Template
    answer_choices: null
    id: id-empty
    jinja: '{{passage}} Anything? ||| {% if label == 7 %}seven{% endif %}'
    name: empty_answer
    reference: ''
  id-summary: !Template
    answer_choices: null
    id: id-summary
    jinja: "{{ passage }}\\n\\nRepeat the passage. |||\\n{{ passage }}"
    name: repeat
    reference: ''
  id-write: !Template
    answer_choices: null
    id: id-write
    jinja: 'Write a passage titled "{{title}}". ||| {{passage}}'
    name: write
    reference: ''
  id-broken: !Template
    answer_choices: null
    id: id-broken
    jinja: '{{passage}} {{ nothing_here[3] }} ||| x'
    name: broken
    reference: ''
  id-unannotated: !Template
    answer_choices: null
    id: id-unannotated
    jinja: '{{passage}} ||| {{title}}'
    name: unannotated
    reference: ''
"""

ANNOTATIONS = [
    ("toyqa", "", "yes_no", "yes-no question answering"),
    ("toyqa", "", "no_passage", "qa"),
    ("toyqa", "", "empty_answer", "qa"),
    ("toyqa", "", "repeat", "text_gen"),
    ("toyqa", "", "broken", "qa"),
    ("toyqa", "", "write", "text generation"),
    ("toyqa", "", "gone_from_yaml", "qa"),
]


def write_csv(path: Path, rows, header=("dataset_name", "dataset_config_name")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow([*header, "template_name", "task_type"])
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def toy(tmp_path):
    templates = tmp_path / "templates"
    (templates / "toyqa").mkdir(parents=True)
    (templates / "toyqa" / "templates.yaml").write_text(TEMPLATES_YAML, encoding="utf-8")
    annotations = write_csv(tmp_path / "types.csv", ANNOTATIONS)
    rows = [
        {"passage": f"  Cats purr number {i}.\n", "question": f"do cats purr {i}", "label": i % 2}
        | {"title": f"Title {i}"}
        for i in range(12)
    ]
    data = write_jsonl(tmp_path / "toyqa.jsonl", rows)
    return templates, annotations, DatasetSpec("toyqa", str(data), "passage"), rows


def everything(toy, **options):
    templates, annotations, spec, _ = toy
    summary = Summary()
    pairs = list(
        build_ctga([spec], templates, annotations, every_template=True, summary=summary, **options)
    )
    return pairs, summary


def test_pairs_are_byte_exact(toy):
    pairs, _ = everything(toy)
    rows = toy[3]
    yes_no = [p for p in pairs if p.template == "yes_no"]
    assert len(yes_no) == 12
    for pair in yes_no:
        row = rows[pair.row]
        assert pair.source == build_prompt(row["passage"], "ynqa")
        assert pair.source == (
            "<|tasktype|>\nyes-no question answering\n<|context|>\n"
            f"Cats purr number {pair.row}.\n<|task|>\n"
        )
        answer = "Yes" if row["label"] else "No"
        assert pair.target == (
            f"Passage: {PLACEHOLDER}\nQuestion: do cats purr {pair.row}?\n<|pipe|>\n{answer}"
        )
        assert pair.target.count("\n" + PIPE + "\n") == 1
        assert (pair.dataset, pair.subset, pair.template_id) == ("toyqa", None, "id-yes-no")
        assert pair.task_type == "yes-no question answering"


def test_passage_in_the_answer_becomes_the_placeholder_too(toy):
    pairs, _ = everything(toy)
    repeat = [p for p in pairs if p.template == "repeat"]
    assert len(repeat) == 12
    for pair in repeat:
        assert pair.target == f"{PLACEHOLDER}\n\nRepeat the passage.\n<|pipe|>\n{PLACEHOLDER}"
        assert "Cats purr" not in pair.target
        assert pair.source.startswith("<|tasktype|>\ntext generation\n")


def test_skips_are_counted_by_reason(toy):
    pairs, summary = everything(toy)
    assert summary.skipped == {
        "not_annotated": 1,
        "unknown_template": 1,
        "no_passage": 24,
        "empty": 12,
        "render_error": 12,
    }
    assert summary.pairs == {"toyqa": 24} and summary.total == len(pairs) == 24
    assert summary.task_types == {"yes-no question answering": 12, "text generation": 12}


def test_one_random_template_per_row_by_default(toy):
    templates, annotations, spec, _ = toy
    summary = Summary()
    pairs = list(build_ctga([spec], templates, annotations, seed=1, summary=summary))
    assert (
        summary.total + sum(summary.skipped[r] for r in ("no_passage", "empty", "render_error"))
        == 12
    )
    assert len({p.row for p in pairs}) == len(pairs)
    assert {p.template for p in pairs} <= {"yes_no", "repeat"}


def test_per_dataset_cap_and_seeded_determinism(toy):
    templates, annotations, spec, _ = toy

    def build(seed):
        return list(
            build_ctga(
                [spec], templates, annotations, every_template=True, per_dataset=5, seed=seed
            )
        )

    first, again, other = build(3), build(3), build(4)
    assert len(first) == 5
    assert first == again
    assert [p.row for p in first] != [p.row for p in other]


def test_pipe_inside_a_field_is_not_a_separator(toy, tmp_path):
    templates, annotations, _, _ = toy
    data = write_jsonl(
        tmp_path / "pipes.jsonl", [{"passage": "P.", "question": "a ||| b", "label": 1}]
    )
    pairs = list(
        build_ctga(
            [DatasetSpec("toyqa", str(data), "passage")],
            templates,
            annotations,
            every_template=True,
        )
    )
    yes_no = next(p for p in pairs if p.template == "yes_no")
    assert yes_no.target == f"Passage: {PLACEHOLDER}\nQuestion: a ||| b?\n<|pipe|>\nYes"


def test_long_passages_are_truncated_like_promptsource(toy, tmp_path):
    templates, annotations, _, _ = toy
    passage = " ".join(["word"] * 1000)  # 4,999 characters
    data = write_jsonl(tmp_path / "long.jsonl", [{"passage": passage, "question": "q", "label": 0}])
    spec = DatasetSpec("toyqa", str(data), "passage")
    cut = next(build_ctga([spec], templates, annotations, every_template=True))
    whole = next(
        build_ctga([spec], templates, annotations, every_template=True, truncate_passage=False)
    )
    assert whole.source == build_prompt(passage, "ynqa")
    context = cut.source.split("<|context|>\n")[1].removesuffix("\n<|task|>\n")
    assert context.endswith("...") and len(context) <= 2048
    assert passage.startswith(context.removesuffix("..."))


def test_missing_and_blank_passages_are_skipped(toy, tmp_path):
    templates, annotations, _, _ = toy
    rows = [{"question": "q", "label": 0}, {"passage": "  ", "question": "q", "label": 0}]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    summary = Summary()
    pairs = list(
        build_ctga(
            [DatasetSpec("toyqa", str(data), "passage")],
            templates,
            annotations,
            every_template=True,
            summary=summary,
        )
    )
    assert pairs == []
    assert summary.skipped["missing_field"] == 6 and summary.skipped["not_text"] == 6


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_output_round_trip_with_provenance(toy, tmp_path, suffix):
    pairs, _ = everything(toy)
    out = tmp_path / f"pairs{suffix}"
    assert write_pairs(iter(pairs), out) == len(pairs)
    if suffix == ".jsonl":
        back = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    else:
        import pyarrow.parquet as pq

        back = pq.read_table(out).to_pylist()
    assert back == [
        {
            "source": p.source,
            "target": p.target,
            "task_type": p.task_type,
            "dataset": p.dataset,
            "subset": None,
            "template": p.template,
            "template_id": p.template_id,
            "row": p.row,
        }
        for p in pairs
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_pairs_stopped_midway_leave_the_earlier_file(toy, tmp_path, suffix):
    pairs, _ = everything(toy)
    out = tmp_path / "out" / f"pairs{suffix}"
    write_pairs(iter(pairs), out)
    before = out.read_bytes()

    def stopped():
        yield pairs[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pairs(stopped(), out)
    assert out.read_bytes() == before and list(out.parent.iterdir()) == [out]


def test_output_suffix_is_checked(tmp_path):
    with pytest.raises(BonitoError, match=r"\.jsonl or \.parquet"):
        write_pairs([], tmp_path / "pairs.csv")


def test_saved_dataset_and_csv_sources(toy, tmp_path):
    import datasets

    templates, annotations, _, rows = toy
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3])}).save_to_disk(folder)
    table = tmp_path / "toy.csv"
    with table.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, ["passage", "question", "title"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("passage", "question", "title")} for r in rows[:2])
    saved = DatasetSpec("toyqa", str(folder), "passage")
    from_csv = DatasetSpec("toyqa", str(table), "passage")
    summary = Summary()
    pairs = list(
        build_ctga([saved, from_csv], templates, annotations, every_template=True, summary=summary)
    )
    # CSV fields are text, so `answer_choices[label]` fails there: only `repeat` renders.
    assert summary.pairs == {"toyqa": 6 + 2}
    assert {p.template for p in pairs[6:]} == {"repeat"}


def test_annotation_errors_are_one_sentence(tmp_path):
    bad_type = write_csv(tmp_path / "a.csv", [("toyqa", "", "yes_no", "poetry")])
    with pytest.raises(BonitoError, match="Line 2 of .*Unknown task type 'poetry'"):
        load_annotations(bad_type)
    no_column = tmp_path / "b.csv"
    no_column.write_text("dataset,template\nx,y\n", encoding="utf-8")
    with pytest.raises(BonitoError, match="no column task_type"):
        load_annotations(no_column)
    short = write_csv(tmp_path / "c.csv", [("squad", "", "t", "exqa")], ("dataset", "subset"))
    assert load_annotations(short)[("squad", None)]["t"].short == "exqa"
    no_subset = write_csv(tmp_path / "d.csv", [("squad", "t", "qg")], ("dataset",))
    assert load_annotations(no_subset)[("squad", None)]["t"].short == "qg"


def test_unknown_dataset_and_unannotated_dataset_fail_early(toy, tmp_path):
    templates, annotations, spec, _ = toy
    with pytest.raises(BonitoError, match="no promptsource templates for 'nope/sub'"):
        build_ctga([DatasetSpec("nope", spec.source, "passage", "sub")], templates, annotations)
    empty = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(BonitoError, match="No template of 'toyqa'"):
        build_ctga([spec], templates, empty)
    with pytest.raises(BonitoError, match="does not exist"):
        list(build_ctga([DatasetSpec("toyqa", "./missing.jsonl", "p")], templates, annotations))


def test_parse_spec_and_config(tmp_path):
    assert parse_spec("super_glue/boolq=data/boolq.jsonl:passage") == DatasetSpec(
        "super_glue", "data/boolq.jsonl", "passage", "boolq", "train"
    )
    assert parse_spec("squad=squad:context:validation") == DatasetSpec(
        "squad", "squad", "context", None, "validation"
    )
    for bad in ("squad", "squad=file.jsonl", "=f:c", "a=b:c:d:e"):
        with pytest.raises(BonitoError, match="dataset spec"):
            parse_spec(bad)
    (tmp_path / "boolq.jsonl").write_text("{}\n")
    config = tmp_path / "ctga.yaml"
    config.write_text(
        "datasets:\n"
        "  - {name: super_glue, subset: boolq, source: boolq.jsonl, passage_field: passage}\n"
        "  - {name: squad, source: squad, passage_field: context, split: validation}\n"
    )
    assert load_specs(config) == [
        DatasetSpec("super_glue", str(tmp_path / "boolq.jsonl"), "passage", "boolq"),
        DatasetSpec("squad", "squad", "context", None, "validation"),
    ]
    config.write_text("datasets:\n  - {name: squad, source: s, passage: context}\n")
    with pytest.raises(BonitoError, match="needs at least name, source and passage_field"):
        load_specs(config)


def test_load_ctga_offline_is_one_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(BonitoError) as info:
        load_ctga()
    message = str(info.value)
    assert message.startswith("The dataset 'BatsResearch/ctga-v1' (split 'train') could not be")
    assert "\n" not in message and message.endswith(".")


@needs_shared
def test_real_promptsource_templates(tmp_path):
    squad = write_jsonl(
        tmp_path / "squad.jsonl",
        [
            {
                "id": str(i),
                "title": "Sky",
                "context": f"The sky is blue on day {i}.",
                "question": "What colour is the sky?",
                "answers": {"text": ["blue"], "answer_start": [11]},
            }
            for i in range(4)
        ],
    )
    boolq = write_jsonl(
        tmp_path / "boolq.jsonl",
        [
            {"question": "is the sky blue", "passage": f"Sky text {i}.", "idx": i, "label": 1}
            for i in range(4)
        ],
    )
    annotations = write_csv(
        tmp_path / "types.csv",
        [
            ("squad", "", "answer_question_given_context", "extractive question answering"),
            ("squad", "", "given_context_generate_question", "question generation"),
            ("super_glue", "boolq", "GPT-3 Style", "yes-no question answering"),
            ("super_glue", "boolq", "after_reading", "yes-no question answering"),
        ],
    )
    specs = [
        DatasetSpec("squad", str(squad), "context"),
        DatasetSpec("super_glue", str(boolq), "passage", "boolq"),
    ]
    summary = Summary()
    pairs = list(build_ctga(specs, SHARED, annotations, every_template=True, summary=summary))
    assert summary.pairs == {"squad": 8, "super_glue/boolq": 8}
    by_name = {(p.template, p.row): p for p in pairs}
    qa = by_name[("answer_question_given_context", 2)]
    assert qa.source == build_prompt("The sky is blue on day 2.", "exqa")
    assert qa.target == (
        "Refer to the passage below and answer the following question:\n\n"
        f"Passage: {PLACEHOLDER}\n\nQuestion: What colour is the sky?\n<|pipe|>\nblue"
    )
    gen = by_name[("given_context_generate_question", 0)]
    assert gen.target == (
        f"{PLACEHOLDER}\n\nGenerate a question from the above passage :\n<|pipe|>\n"
        "What colour is the sky?"
    )
    gpt3 = by_name[("GPT-3 Style", 1)]
    assert gpt3.target == f"{PLACEHOLDER} \nQuestion: is the sky blue\nAnswer:\n<|pipe|>\nYes"
    assert gpt3.subset == "boolq" and gpt3.source == build_prompt("Sky text 1.", "ynqa")
    for pair in pairs:
        assert pair.target.count(PIPE) == 1 and PLACEHOLDER in pair.target


@needs_shared
def test_real_anli_templates_without_the_passage_are_skipped(tmp_path):
    """Real anli templates: a passage field they never use makes every one `no_passage`, the
    premise makes pairs."""
    data = write_jsonl(
        tmp_path / "anli.jsonl",
        [{"premise": "A man sleeps.", "hypothesis": "A man is awake.", "label": 2, "uid": "u"}],
    )
    names = load_templates(SHARED, "anli", None)
    annotations = write_csv(tmp_path / "t.csv", [("anli", "", t.name, "nli") for t in names])
    summary = Summary()
    pairs = list(
        build_ctga(
            [DatasetSpec("anli", str(data), "uid")],
            SHARED,
            annotations,
            every_template=True,
            summary=summary,
        )
    )
    assert pairs == [] and summary.skipped["no_passage"] == len(names)
    ok = list(
        build_ctga(
            [DatasetSpec("anli", str(data), "premise")], SHARED, annotations, every_template=True
        )
    )
    assert ok and all(p.source == build_prompt("A man sleeps.", "nli") for p in ok)


def test_passage_only_in_the_answer_is_kept_on_request(toy):
    pairs, summary = everything(toy, passage_in_answer=True)
    write = [p for p in pairs if p.template == "write"]
    assert len(write) == 12 and summary.skipped["no_passage"] == 12
    for pair in write:
        assert pair.target == f'Write a passage titled "Title {pair.row}".\n<|pipe|>\n{PLACEHOLDER}'
        assert pair.source.startswith("<|tasktype|>\ntext generation\n")


@needs_shared
def test_real_review_generation_template_needs_passage_in_answer(tmp_path):
    row = {"package_name": "com.cat", "review": "Great app.", "date": "d", "star": 5}
    data = write_jsonl(tmp_path / "reviews.jsonl", [row])
    annotations = write_csv(
        tmp_path / "t.csv", [("app_reviews", "", "generate_review", "text_gen")]
    )
    spec = DatasetSpec("app_reviews", str(data), "review")
    summary = Summary()
    assert list(build_ctga([spec], SHARED, annotations, summary=summary)) == []
    assert summary.skipped["no_passage"] == 1
    (pair,) = build_ctga([spec], SHARED, annotations, passage_in_answer=True)
    assert pair.target.endswith("\n<|pipe|>\n" + PLACEHOLDER)
    assert PLACEHOLDER not in pair.target.split(PIPE)[0] and "com.cat" in pair.target
    assert pair.source == build_prompt("Great app.", "text_gen")


def test_cli_build(toy, tmp_path):
    from typer.testing import CliRunner

    from bonito.cli import app

    groups = {group.name for group in app.registered_groups}
    if "ctga" not in groups:
        pytest.skip("the `bonito ctga` command group is not registered in bonito.cli yet")
    templates, annotations, spec, _ = toy
    out = tmp_path / "pairs.jsonl"
    args = ["ctga", "build", "--templates", str(templates), "--annotations", str(annotations)]
    args += ["--dataset", f"toyqa={spec.source}:passage", "--per-dataset", "4", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--every-template", "--seed", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = build_ctga(
        [spec], templates, annotations, per_dataset=4, seed=2, every_template=True
    )
    assert rows == [asdict(pair) for pair in expected]
    result = CliRunner().invoke(app, ["ctga", "build", *args[2:6], "-o", str(out)])
    assert isinstance(result.exception, BonitoError)


def test_the_first_render_error_and_missing_field_are_kept(toy, tmp_path):
    _, summary = everything(toy)
    first = summary.first["render_error"]
    assert first.startswith("row ") and " of toyqa fails template 'broken' (" in first
    assert "'nothing_here' is undefined" in first

    templates, annotations, spec, rows = toy
    data = write_jsonl(tmp_path / "other.jsonl", rows[:2])
    summary = Summary()
    other = DatasetSpec("toyqa", str(data), "text")
    assert list(build_ctga([other], templates, annotations, summary=summary)) == []
    assert summary.first["missing_field"].endswith(
        "has no field 'text' (it has: passage, question, label, title)"
    )


def test_an_answer_field_of_the_wrong_shape_is_named(tmp_path):
    """squad's templates read answers['text']; a row whose answers is a plain list fails them
    with a later, obscure error unless the undefined value is named."""
    (tmp_path / "t" / "sq").mkdir(parents=True)
    (tmp_path / "t" / "sq" / "templates.yaml").write_text(
        "dataset: sq\ntemplates:\n  a: !Template\n    id: a\n    name: answer\n    jinja: "
        "\"{{context}} {{question}} ||| {{answers['text'] | most_frequent | choice}}\"\n",
        encoding="utf-8",
    )
    annotations = write_csv(tmp_path / "a.csv", [("sq", "", "answer", "exqa")])
    row = {"context": "Cats purr.", "question": "What do cats do?", "answers": ["purr"]}
    spec = DatasetSpec("sq", str(write_jsonl(tmp_path / "sq.jsonl", [row])), "context")
    summary = Summary()
    assert list(build_ctga([spec], tmp_path / "t", annotations, summary=summary)) == []
    assert summary.first["render_error"] == (
        "row 0 of sq fails template 'answer' ('list object' has no attribute 'text')"
    )
    error = str(summary.nothing_made())
    assert error.startswith("No pair was made (skipped: render_error 1): row 0 of sq fails")
    assert "the hub dataset they were written for (docs/ctga.md)." in error


def test_cli_build_that_makes_nothing_fails_and_writes_no_file(toy, tmp_path):
    from typer.testing import CliRunner

    from bonito.cli import app

    templates, annotations, spec, _ = toy
    out = tmp_path / "pairs.jsonl"
    args = ["ctga", "build", "--templates", str(templates), "--annotations", str(annotations)]
    result = CliRunner().invoke(app, [*args, "--dataset", f"toyqa={spec.source}:text", "-o", out])
    assert isinstance(result.exception, BonitoError)
    message = str(result.exception)
    assert message.startswith("No pair was made (skipped: missing_field 12, ")
    assert "has no field 'text' (it has: passage, question, label, title)" in message
    assert message.endswith("(--dataset NAME=SOURCE:FIELD).")
    assert not out.exists()

    afile = tmp_path / "afile"
    afile.write_text("")
    result = CliRunner().invoke(
        app, [*args, "--dataset", f"toyqa={spec.source}:passage", "-o", afile / "p.jsonl"]
    )
    assert str(result.exception) == (
        f"Cannot write in {afile}: it is a file, not a folder; choose a writable path (--output)."
    )
