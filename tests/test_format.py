"""The bonito-v1 prompt and parse, byte for byte (FORMAT.md)."""

import pytest

from bonito import TASK_TYPES, BonitoError, Rejection, Task, build_prompt, parse_task

ALL_NAMES = [(t.short, t.name) for t in TASK_TYPES] + [(t.name, t.name) for t in TASK_TYPES]


@pytest.mark.parametrize(("given", "full_name"), ALL_NAMES)
def test_prompt_for_every_name(given, full_name):
    prompt = build_prompt("  A cat sat.\n", given)
    assert prompt == f"<|tasktype|>\n{full_name}\n<|context|>\nA cat sat.\n<|task|>\n"


def test_prompt_matches_format_doc_example():
    expected = "<|tasktype|>\nnatural language inference\n<|context|>\nA cat sat.\n<|task|>\n"
    assert build_prompt("  A cat sat.\n", "nli") == expected
    assert build_prompt("  A cat sat.\n", "  Natural Language INFERENCE ") == expected


@pytest.mark.parametrize(
    "context",
    [
        "Ünïcödé — 東京 🐟 text",
        "braces {{ and }} and {{context}} inside",
        "markers <|pipe|> and <|task|> inside the passage",
        "line one\n\n  line two\t",
    ],
)
def test_prompt_keeps_awkward_passages_verbatim(context):
    prompt = build_prompt(f"\n \t{context}  \n", "ynqa")
    assert prompt.endswith(f"<|context|>\n{context.strip()}\n<|task|>\n")


@pytest.mark.parametrize("context", ["", "   ", "\n\t \n"])
def test_empty_context_is_a_clear_error(context):
    with pytest.raises(BonitoError, match="empty after removing surrounding whitespace"):
        build_prompt(context, "nli")
    with pytest.raises(BonitoError, match="empty"):
        parse_task("a\n<|pipe|>\nb", context)


def test_parse_replaces_placeholder_in_both_parts():
    completion = "  {{context}}\nIs it true? {{context}}\n<|pipe|>\n{{context}} yes \n"
    task = parse_task(completion, "  The sky is blue. ")
    assert task == Task(
        input="The sky is blue.\nIs it true? The sky is blue.",
        output="The sky is blue. yes",
    )


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("no pipe at all", "no_pipe"),
        ("", "no_pipe"),
        ("a <|pipe|> b <|pipe|> c", "several_pipes"),
        ("  \n<|pipe|>\nanswer", "empty_input"),
        ("question\n<|pipe|>\n   ", "empty_output"),
    ],
)
def test_parse_rejections(completion, reason):
    assert parse_task(completion, "passage") == Rejection(reason)


def test_parse_of_a_passage_with_markers_and_braces():
    context = "uses <|pipe|> and {{x}} literally"
    task = parse_task("Read: {{context}}\n<|pipe|>\nok", context)
    assert task == Task(input=f"Read: {context}", output="ok")


def test_parse_does_not_split_on_pipe_lookalikes():
    task = parse_task("a | b <pipe> c\n<|pipe|>\nd", "p")
    assert task == Task(input="a | b <pipe> c", output="d")
