import pytest

from bonito import TASK_TYPES, BonitoError, resolve_task_type

FORMAT_TABLE = {
    "exqa": "extractive question answering",
    "mcqa": "multiple-choice question answering",
    "qg": "question generation",
    "qa": "question answering without choices",
    "ynqa": "yes-no question answering",
    "coref": "coreference resolution",
    "paraphrase": "paraphrase generation",
    "paraphrase_id": "paraphrase identification",
    "sent_comp": "sentence completion",
    "sentiment": "sentiment",
    "summarization": "summarization",
    "text_gen": "text generation",
    "topic_class": "topic classification",
    "wsd": "word sense disambiguation",
    "te": "textual entailment",
    "nli": "natural language inference",
}


def test_the_sixteen_types_match_the_format():
    assert {t.short: t.name for t in TASK_TYPES} == FORMAT_TABLE
    assert len(TASK_TYPES) == 16


@pytest.mark.parametrize("short", FORMAT_TABLE)
def test_either_form_any_case_and_spacing(short):
    name = FORMAT_TABLE[short]
    for given in (short, name, f"  {short.upper()} ", f"\t{name.title()}\n"):
        assert resolve_task_type(given).name == name


def test_unknown_type_lists_valid_ones_and_closest():
    with pytest.raises(BonitoError) as error:
        resolve_task_type("ynq")
    message = str(error.value)
    assert "Unknown task type 'ynq'" in message
    assert "Did you mean 'ynqa'?" in message
    assert all(t.short in message for t in TASK_TYPES)


def test_cli_tasks_prints_the_table():
    from typer.testing import CliRunner

    from bonito.cli import app

    result = CliRunner().invoke(app, ["tasks"], terminal_width=200)
    assert result.exit_code == 0
    for short, name in FORMAT_TABLE.items():
        assert short in result.output and name in result.output


def test_saved_declarations_replace_a_link_in_the_folder(tmp_path):
    """F18: the run folder's declarations file is replaced, never the file a link there names."""
    from bonito.prompt import task_types
    from bonito.prompt.task_types import TASK_TYPES_FILE, load_task_types, save_task_types

    tables = (task_types._BY_NAME, task_types._BY_SHORT, task_types._REGISTERED)
    saved = [dict(table) for table in tables]
    declared = tmp_path / "types.yaml"
    declared.write_text("- short: desk\n  name: news desk\n  description: Which desk.\n")
    victim, run = tmp_path / "victim", tmp_path / "run"
    victim.write_text("keep me\n")
    run.mkdir()
    (run / TASK_TYPES_FILE).symlink_to(victim)
    try:
        path = save_task_types(load_task_types(declared), run)
    finally:  # the registered type is forgotten
        for table, before in zip(tables, saved, strict=True):
            table.clear()
            table.update(before)
    assert victim.read_text() == "keep me\n"
    assert not path.is_symlink() and "short: desk" in path.read_text()
