"""The task-aware checks: hand-written cases for every reason code, then the promptsource templates
bonito-v1 was trained on, rendered on made-up records, for the answer checks (correct answers
pass, wrong ones are rejected), and real SQuADShifts answers for the extractive check."""

import json
import random
import re
from pathlib import Path

import pytest

from bonito import TASK_TYPES, Task, TaskType, resolve_task_type
from bonito.prompt.checks import answer_words, check_task, extractive_answer, offered_label

DATA = Path(__file__).parents[2] / "shared" / "data"
TEMPLATES = DATA / "promptsource-templates"

PASSAGE = (
    "Maria Lopez opened the Harbour Street bakery in 1998. Within ten years it supplied bread to "
    "four schools, and in 2012 she sold it to her nephew, Daniel."
)
TRICKY_PASSAGE = (
    PASSAGE
    + "\nThe menu listed:\n- rye\n- sourdough\nOptions: Tuesday, Friday\n(A) buns (B) cakes\n"
    "Was it true, false, or neither? Yes, no, or maybe? {{ a brace }} and <|a bar|>."
)
"""A passage with lists, label sets and markers of its own: none of them may count."""


def check(kind: str | TaskType, instruction: str, answer: str, passage: str = PASSAGE, **kw):
    kind = kind if isinstance(kind, TaskType) else resolve_task_type(kind)
    return check_task(Task(instruction, answer), kind, passage, **kw)


# Generic checks


def test_truncated_comes_first():
    assert check("qa", "Who sold it?", "Maria", finish_reason="length") == "truncated"
    assert check("qa", "Who sold it?", "Who sold it?", finish_reason="length") == "truncated"
    assert check("qa", "Who sold it?", "Maria", finish_reason="stop") is None


@pytest.mark.parametrize("instruction, answer", [(" \n", "Maria"), ("Who sold it?", "\t")])
def test_empty_field(instruction, answer):
    assert check("qa", instruction, answer) == "empty_field"


def test_output_equals_input_after_case_and_spaces():
    assert check("qa", "Who  sold\nit?", "who sold it?") == "output_equals_input"
    assert check("qa", "Who sold it?", "Who sold it") is None
    assert check("qa", "Who sold it?", "Who sold it? Maria") is None


@pytest.mark.parametrize(
    "instruction, answer",
    [
        (f"{PASSAGE}\nWho sold it to {{{{ name }}?", "Maria"),
        (f"{PASSAGE}\nWho sold it?", "Maria <|endoftext|>"),
        (f"{TRICKY_PASSAGE}\nWho sold it? {{{{question}}}}", "Maria"),
        (f"{TRICKY_PASSAGE}\nWho sold it?", f"{TRICKY_PASSAGE}\n<|pipe|>"),
    ],
)
def test_leftover_marker_outside_the_passage(instruction, answer):
    passage = TRICKY_PASSAGE if TRICKY_PASSAGE in instruction else PASSAGE
    assert check("summarization", instruction, answer, passage) == "leftover_marker"


def test_single_braces_and_bars_are_not_markers():
    instruction = f"{PASSAGE}\nSummarise {{it}} in one line | <b>."
    assert check("summarization", instruction, "Maria {sold} it |x| } |>") is None


def test_markers_inside_the_passage_are_fine():
    instruction = f"{TRICKY_PASSAGE}\n\nWrite a title for this text."
    assert check("summarization", instruction, "The bakery", TRICKY_PASSAGE) is None
    assert check("text_gen", "Write a story.", TRICKY_PASSAGE, TRICKY_PASSAGE) is None
    assert check("text_gen", "Continue:", f"{TRICKY_PASSAGE} <|", TRICKY_PASSAGE) == (
        "leftover_marker"
    )


def test_context_is_stripped_like_the_parse_does():
    instruction = f"{TRICKY_PASSAGE}\nWrite a title."
    assert check("summarization", instruction, "Bakery", f"\n  {TRICKY_PASSAGE} \n") is None


def test_types_without_an_answer_check_get_only_the_generic_ones():
    unchecked = {t.short for t in TASK_TYPES if t.check is None}
    assert unchecked == {
        "qg", "qa", "coref", "paraphrase", "sent_comp", "sentiment", "summarization",
        "text_gen", "topic_class", "wsd",
    }  # fmt: skip
    for short in unchecked:
        assert check(short, f"{PASSAGE}\nAnything?", "Purple elephant") is None


def test_a_custom_type_declares_its_own_check():
    def shouts(instruction, answer, passage):
        return None if answer.isupper() else "not_shouted"

    loud = TaskType("loud", "loud answering", shouts)
    assert check(loud, "Say it", "MARIA") is None
    assert check(loud, "Say it", "Maria") == "not_shouted"
    assert check(loud, "Say it", "Maria", finish_reason="length") == "truncated"
    stance = TaskType("stance", "stance", offered_label(["Agree", "Disagree"]))
    assert check(stance, "Does the text agree?", "agree.") is None
    assert check(stance, "Does the text agree?", "Yes") == "label_not_offered"
    offering = "Is its stance agree, disagree, or unrelated?"
    assert check(stance, offering, "Unrelated") is None
    assert check(stance, offering, "Yes") == "label_not_offered"


# ynqa


@pytest.mark.parametrize(
    "question, answer, expected",
    [
        ("Did Maria sell the bakery?", "Yes", None),
        ("Did Maria sell the bakery?", " no. ", None),
        ("Did Maria sell the bakery? True or False?", "True", None),
        ("Did she sell it? Yes, no, or maybe?", "Maybe", None),
        ("Did Maria sell the bakery?", "Daniel", "not_yes_no"),
        ("Did Maria sell the bakery?", "Yes, to Daniel.", "not_yes_no"),
        ("Did Maria sell the bakery? Yes or no?", "True", "not_yes_no"),
        ("Did Maria sell the bakery?", "Maybe", "not_yes_no"),
        ("Facts:\n- she sold it\n- he bought it\nIs that right?", "she sold it", "not_yes_no"),
    ],
)
def test_yes_no(question, answer, expected):
    assert check("ynqa", f"{TRICKY_PASSAGE}\n{question}", answer, TRICKY_PASSAGE) == expected


# mcqa

OPTION_FORMATS = [  # the options Paris, Lyon, Nice, and the label of Lyon if they have labels
    ("Options:\n- Paris\n- Lyon\n- Nice", None),
    ("OPTIONS:\n- Paris\n- Lyon\n- Nice", None),
    ("Choose one:\n* Paris\n* Lyon\n* Nice", None),
    ("- Paris\n\n- Lyon\n\n- Nice", None),
    ("A. Paris\nB. Lyon\nC. Nice", "B"),
    ("(A) Paris (B) Lyon (C) Nice", "B"),
    ("Possible answers:\n(a) Paris\n(b) Lyon\n(c) Nice", "B"),
    ("Options: A: Paris\nB: Lyon\nC: Nice", "B"),
    ("A: Paris\n\nB: Lyon\n\nC: Nice", "B"),
    ("A) Paris\nB) Lyon\nC) Nice", "B"),
    ("1) Paris\n2) Lyon\n3) Nice", "2"),
    ("Choices:\n- A: Paris\n- B: Lyon\n- C: Nice", "B"),
    ("A -> Paris\nB -> Lyon\nC -> Nice", "B"),
    ("Option 1: Paris\nOption 2: Lyon\nOption 3: Nice", "2"),
    ("Choose from: Paris, Lyon, Nice.", None),
    ("Pick one: Paris; Lyon; Nice", None),
    ("Possible answers: Paris, Lyon, Nice", None),
    ("Is it Paris, Lyon, or Nice?", None),
    ("Answer the question (choices are Paris or Lyon ):", None),
    ('Choose between "Paris", "Lyon" and "Nice".', None),
    ("Which one is the capital? Paris, Lyon, Nice?", None),
]


@pytest.mark.parametrize("options, label", OPTION_FORMATS)
def test_option_formats(options, label):
    instruction = f"{TRICKY_PASSAGE}\nWhere does Daniel live?\n{options}"
    for answer in ("Lyon", "lyon.", " LYON "):
        assert check("mcqa", instruction, answer, TRICKY_PASSAGE) is None
    if label:
        for answer in (label, f"{label}.", f"({label.lower()})", f"{label}. Lyon"):
            assert check("mcqa", instruction, answer, TRICKY_PASSAGE) is None
    for answer in ("Marseille", "sourdough", "Friday", "cakes", "Paris Lyon", "D", "4"):
        assert check("mcqa", instruction, answer, TRICKY_PASSAGE) == "not_an_option"


def test_no_options_listed_outside_the_passage():
    instruction = f"{TRICKY_PASSAGE}\nWhat did the menu list?"
    assert check("mcqa", instruction, "sourdough", TRICKY_PASSAGE) == "no_options"
    assert check("mcqa", f"{PASSAGE}\nWho bought it?", "Daniel") == "no_options"


def test_an_option_with_commas_in_an_inline_list():
    instruction = f"{PASSAGE}\nWhat will Daniel do?\nPossible answers: bake, and sell bread, close"
    assert check("mcqa", instruction, "bake, and sell bread") is None
    assert check("mcqa", instruction, "close") is None
    assert check("mcqa", instruction, "sell cakes") == "not_an_option"


# exqa


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Harbour Street bakery", None),
        ("the harbour street Bakery.", None),
        ("her nephew Daniel", None),
        ("in 2012,", None),
        ("Daniel's bakery", "not_in_context"),
        ("Purple elephant", "not_in_context"),
        ("Who bought", "not_in_context"),
        # a piece of a word, or no word at all, is not a span of the passage
        ("arbo", "not_in_context"),
        ("bake", "not_in_context"),
        ("ria Lopez", "not_in_context"),
        ("The", "not_in_context"),
        ("an", "not_in_context"),
        ("the.", "not_in_context"),
        ("...", "not_in_context"),
    ],
)
def test_extractive(answer, expected):
    assert check("exqa", f"{PASSAGE}\nWho bought the bakery?", answer) == expected


def test_answer_words():
    assert answer_words("The  Quick, brown fox!\n") == "quick brown fox"
    assert answer_words("An apple a day") == "apple day"
    assert answer_words("“Theatre”—then") == "theatre then"
    assert answer_words("Daniel's") == "daniel s"
    assert answer_words("Café 2012年开业") == "café 2012 年 开 业"


@pytest.mark.parametrize(
    "answer, expected",
    [("面包店", None), ("1998年", None), ("玛丽亚", None), ("面包车", "not_in_context")],
)
def test_extractive_in_a_script_written_without_spaces(answer, expected):
    passage = "玛丽亚于1998年在港口街开了一家面包店。"
    assert check("exqa", f"{passage}\n谁开了面包店？", answer, passage) == expected


# nli, te, paraphrase_id


@pytest.mark.parametrize(
    "kind, question, answer, expected",
    [
        ("nli", 'Does it follow that "Daniel owns it"? Yes, no, or maybe?', "Maybe", None),
        ("nli", 'Does it follow that "Daniel owns it"? Yes, no, or maybe?', "True", "no"),
        ("nli", 'Is "Daniel owns it" always, sometimes, or never true?', "Never", None),
        ("nli", 'Is "Daniel owns it" always, sometimes, or never true?', "Maybe", "no"),
        ("nli", "Hypothesis: Daniel owns it.\nOPTIONS:\n- yes\n- it is not possible to tell\n- no",
         "It is not possible to tell", None),
        ("nli", "Hypothesis: Daniel owns it.\nOPTIONS:\n- yes\n- no", "Maybe", "no"),
        ("nli", "Daniel owns it. Entailment, neutral or contradiction?", "neutral", None),
        ("nli", "Daniel owns it. Entailment, neutral or contradiction?", "yes", "no"),
        ("nli", '"Daniel owns it" is definitely correct, incorrect, or inconclusive?',
         "Correct", None),
        ("nli", 'Can we infer that "Daniel bakes or sells bread"?', "Yes", None),
        ("nli", "Can we infer that Daniel owns it?", "Maybe", None),
        ("nli", "Can we infer that Daniel owns it?", "Daniel", "no"),
        ("te", "Question: Daniel owns it. True or False?", "false", None),
        ("te", "Question: Daniel owns it. True or False?", "Yes", "no"),
        ("te", 'Does this imply that "Daniel owns it"? Yes or no?', "No", None),
        ("te", "Does this imply that Daniel owns it?", "not entailment", None),
        ("te", "Does this imply that Daniel owns it?", "Maybe", "no"),
        ("te", 'Does this mean that "Daniel owns it" is true? A) yes or B) no.', "B", None),
        ("te", 'Does this mean that "Daniel owns it" is true? A) yes or B) no.', "no", None),
        ("te", 'Does this mean that "Daniel owns it" is true? A) yes or B) no.', "C", "no"),
        ("paraphrase_id", "Sentence 2: She sold it.\nParaphrase or not?", "Yes", None),
        ("paraphrase_id", 'Are they "equivalent" or "not equivalent"?', "not equivalent", None),
        ("paraphrase_id", 'Are they "equivalent" or "not equivalent"?', "Yes", "no"),
        ("paraphrase_id", "Do these mean the same thing?\nShe sold it.", "no", None),
        ("paraphrase_id", "Do these mean the same thing?\nShe sold it.", "Maybe", "no"),
        ("paraphrase_id", "Same meaning? Choose from: (A) yes (B) no", "(A)", None),
    ],
)  # fmt: skip
def test_offered_labels(kind, question, answer, expected):
    expected = expected and "label_not_offered"
    assert check(kind, f"{TRICKY_PASSAGE}\n{question}", answer, TRICKY_PASSAGE) == expected


# The promptsource templates of ctga-v1, bonito-v1's training data: (dataset, subset) -> the
# expression ctga replaced by the passage, and the templates it annotated with a checked type.
# Source: BatsResearch/nayak-aclfindings24-code, ctga/task_type_bonito.py and
# ctga/bonito_prompts_task_types.csv.
CTGA = {
    ("super_glue/boolq", "{{passage}}"): {
        "ynqa": ["after_reading", "GPT-3 Style", "I wonder…", "yes_no_question",
                 "could you tell me…", "exam", "based on the following passage", "exercise",
                 "based on the previous passage", "valid_binary"],
    },
    ("race/all", "{{article}}"): {
        "ynqa": ["Is this the right answer"],
        "mcqa": ["Taking a test", "Select the best answer (generate span)",
                 "Select the best answer", "Select the best answer (no instructions)"],
    },
    ("social_i_qa", "{{context}}"): {
        "ynqa": ["Check if a random answer is valid or not"],
        "mcqa": ["Show choices and generate answer", "Show choices and generate index"],
    },
    ("cosmos_qa", "{{ context }}"): {
        "mcqa": ["description_context_question_answer_text",
                 "description_context_question_answer_id",
                 "context_description_question_answer_text", "no_prompt_id", "no_prompt_text",
                 "context_description_question_answer_id",
                 "context_question_description_answer_id",
                 "context_question_description_answer_text"],
    },
    ("quail", "{{ context }}"): {
        "mcqa": ["context_question_answer_description_id",
                 "context_question_answer_description_text",
                 "description_context_question_answer_id",
                 "context_question_description_answer_text",
                 "context_question_description_answer_id", "no_prompt_id",
                 "context_description_question_answer_id", "no_prompt_text",
                 "context_description_question_answer_text",
                 "description_context_question_answer_text"],
    },
    ("dream", '{{dialogue | join("\\n\\n")}}'): {
        "mcqa": ["baseline", "read_the_following_conversation_and_answer_the_question"],
    },
    ("qasc", "{{ fact1[0]|capitalize }}{{ fact1[1:]|trim|trim('.') }}"): {
        "mcqa": ["qa_with_separated_facts_1", "qa_with_separated_facts_3",
                 "qa_with_separated_facts_2"],
    },
    ("wiki_hop/original", "{% for support in supports %}\n- {{ support }}\n{% endfor %}"): {
        "mcqa": ["choose_best_object_interrogative_1", "choose_best_object_affirmative_1",
                 "choose_best_object_affirmative_3", "choose_best_object_affirmative_2",
                 "choose_best_object_interrogative_2"],
    },
    ("super_glue/record", "{{passage}}"): {
        "mcqa": ["Which one is the placeholder?", "choose_between",
                 "What could the placeholder be?", "trying_to_decide", "pick_one_option",
                 "Can you figure out…"],
        "exqa": ["corrupted", "In the question above, the placeholder stands for",
                 "the placeholder refers to…", "exercise"],
    },
    ("app_reviews", "{{review}}"): {
        "mcqa": ["categorize_rating_using_review", "convert_to_star_rating"],
    },
    ("quartz", "{{ para }}"): {
        "mcqa": ["use_info_from_question_paragraph", "paragraph_question_plain_concat",
                 "use_info_from_paragraph_question", "answer_question_based_on",
                 "answer_question_below", "read_passage_below_choose",
                 "having_read_above_passage", "given_the_fact_answer_the_q"],
    },
    ("squad", "{{context}}"): {
        "exqa": ["answer_question_given_context", "given_context_answer_question_variation",
                 "answer_the_question", "answer_given_context_and_question"],
    },
    **{
        (f"adversarial_qa/{subset}", "{{context}}"): {
            "exqa": ["tell_what_it_is", "question_context_answer", "based_on",
                     "answer_the_following_q"],
        }
        for subset in ("dbert", "dbidaf", "droberta")
    },
    ("quoref", "{{context}}"): {
        "exqa": ["Guess Answer", "Answer Question Given Context", "Find Answer",
                 "Context Contains Answer", "Given Context Answer Question",
                 "What Is The Answer", "Answer Test", "Found Context Online",
                 "Answer Friend Question"],
    },
    **{
        (f"duorc/{subset}", "{{plot}}"): {
            "exqa": ["decide_worth_it", "question_answering", "movie_director",
                     "extract_answer", "answer_question"],
        }
        for subset in ("ParaphraseRC", "SelfRC")
    },
    ("ropes", "{{ background }}"): {
        "exqa": ["prompt_beginning", "prompt_bottom_hint_beginning",
                 "given_background_situation", "plain_bottom_hint",
                 "plain_background_situation", "background_new_situation_answer",
                 "background_situation_middle", "new_situation_background_answer", "prompt_mix",
                 "read_background_situation"],
    },
    ("super_glue/cb", "{{premise}}"): {
        "nli": ["can we infer", "based on the previous passage",
                "claim true/false/inconclusive", "does it follow that", "justified in saying",
                "always/sometimes/never", "GPT-3 style", "consider always/sometimes/never",
                "guaranteed true", "must be true", "guaranteed/possible/impossible",
                "does this imply", "MNLI crowdsource", "should assume",
                "take the following as truth"],
    },
    ("anli", "{{premise}}"): {
        "nli": ["MNLI crowdsource", "should assume", "does it follow that", "GPT-3 style",
                "based on the previous passage", "justified in saying",
                "take the following as truth", "must be true", "can we infer",
                "guaranteed/possible/impossible", "always/sometimes/never", "does this imply",
                "consider always/sometimes/never", "claim true/false/inconclusive",
                "guaranteed true"],
    },
    ("super_glue/rte", "{{premise}}"): {
        "te": ["MNLI crowdsource", "guaranteed true", "can we infer", "GPT-3 style",
               "does this imply", "should assume", "does it follow that",
               "based on the previous passage", "justified in saying", "must be true"],
    },
    ("paws/labeled_final", "{{sentence1}}"): {
        "paraphrase_id": ["task_description-no-label", "Meaning", "context-question-no-label",
                          "Rewrite-no-label", "context-question", "Concatenation",
                          "Concatenation-no-label", "Meaning-no-label", "PAWS-ANLI GPT3",
                          "Rewrite", "PAWS-ANLI GPT3-no-label"],
    },
    ("glue/mrpc", "{{sentence1}}"): {
        "paraphrase_id": ["want to know", "paraphrase", "equivalent", "replace", "same thing"],
    },
}  # fmt: skip

_QA = {"question": "Who bought the bakery?"}
_SENTENCES = {"sentence1": PASSAGE, "sentence2": "Maria sold the bakery to Daniel.", "label": 1}
_PREMISE = {"premise": PASSAGE, "hypothesis": "Daniel owns the bakery.", "label": 0}
RECORDS = {
    "super_glue/boolq": {"passage": PASSAGE, "question": "did maria sell the bakery", "label": 1},
    "race/all": {**_QA, "options": ["Her nephew", "A school", "Maria", "Nobody"], "answer": "A"},
    "social_i_qa": {
        **_QA, "answerA": "her nephew", "answerB": "a school", "answerC": "nobody", "label": "1",
    },
    "cosmos_qa": {
        **_QA, "answer0": "Her nephew", "answer1": "A school", "answer2": "Maria",
        "answer3": "None of the above choices .", "label": 0,
    },
    "quail": {
        **_QA, "answers": ["Her nephew", "A school", "not enough information", "Maria"],
        "correct_answer_id": 0,
    },
    "dream": {**_QA, "dialogue": ["M: Hi.", "W: Hello."], "choice": ["Daniel", "Maria", "A school"],
              "answer": "Daniel"},
    "qasc": {
        **_QA, "fact1": PASSAGE, "fact2": "Nephews are relatives.",
        "combinedfact": "A relative bought the bakery.",
        "choices": {"text": ["nephew", "school", "aunt", "baker", "teacher", "niece", "mayor",
                             "cousin"], "label": list("ABCDEFGH")},
        "answerKey": "A",
    },
    "wiki_hop/original": {
        "supports": [PASSAGE], "question": "owned_by harbour street bakery",
        "candidates": ["daniel", "maria lopez", "four schools"], "answer": "daniel",
    },
    "super_glue/record": {
        "passage": PASSAGE, "query": "@placeholder bought the bakery in 2012.",
        "entities": ["Maria Lopez", "Daniel", "Harbour Street"], "answers": ["Daniel"],
    },
    "app_reviews": {"review": PASSAGE, "star": 4, "package_name": "com.bakery"},
    "quartz": {
        "para": PASSAGE, "question": "If the bakery supplies more schools it needs _____ bread.",
        "choices": {"text": ["more", "less"], "label": ["A", "B"]}, "answerKey": "A",
    },
    "squad": {**_QA, "answers": {"text": ["her nephew, Daniel"], "answer_start": [0]}},
    "adversarial_qa": {**_QA, "answers": {"text": ["Daniel"]}, "metadata": {"split": "train"}},
    "quoref": {**_QA, "answers": {"text": ["Daniel"]}, "title": "The bakery"},
    "duorc": {**_QA, "answers": ["Daniel"], "no_answer": False, "title": "The Bakery"},
    "ropes": {
        **_QA, "situation": "Hill town got a bakery in 1998, Vale town in 2012.",
        "question": "Which town got a bakery first, Hill town or Vale town?",
        "answers": {"text": ["Hill town"]},
    },
    "super_glue/cb": _PREMISE, "anli": _PREMISE, "super_glue/rte": _PREMISE,
    "paws/labeled_final": _SENTENCES, "glue/mrpc": _SENTENCES,
}  # fmt: skip

WRONG = {
    "ynqa": ["Purple elephant", "Neither", "sourdough"],
    "mcqa": ["Purple elephant", "sourdough", "cakes", "Friday"],
    "exqa": ["Purple elephant", "Who bought"],
    "nli": ["Purple elephant", "Entailment", "Neither", "Maybe", "Yes"],
    "te": ["Purple elephant", "Entailment", "Neither", "Maybe", "Yes"],
    "paraphrase_id": ["Purple elephant", "Entailment", "Neither", "Maybe", "Yes"],
}
EXPECTED_REJECTION = {
    "ynqa": "not_yes_no",
    "mcqa": "not_an_option",
    "exqa": "not_in_context",
    "nli": "label_not_offered",
    "te": "label_not_offered",
    "paraphrase_id": "label_not_offered",
}


def _load(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    for tag in ("!Template", "!TemplateMetadata"):
        Loader.add_constructor(tag, lambda loader, node: loader.construct_mapping(node, deep=True))
    with path.open(encoding="utf-8") as file:
        return {t["name"]: t for t in yaml.load(file, Loader=Loader)["templates"].values()}


def _ctga_cases() -> list:
    if not TEMPLATES.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{TEMPLATES} is absent"))]
    cases = []
    for (dataset, passage_expression), by_type in CTGA.items():
        templates = _load(TEMPLATES / dataset / "templates.yaml")
        for kind, names in by_type.items():
            for name in names:
                cases.append(
                    pytest.param(
                        (kind, dataset, passage_expression, templates[name]),
                        id=f"{kind}-{dataset}-{name}",
                    )
                )
    return cases


def _with_passage_slot(jinja: str, expression: str) -> str | None:
    """The template with the passage expression replaced by `{{copy_context}}`, as ctga did."""
    if expression in jinja:
        return jinja.replace(expression, "{{copy_context}}")
    core = re.escape(expression.strip("{} "))
    found = re.subn(r"\{\{\s*" + core + r"\s*\}\}", "{{copy_context}}", jinja)
    return found[0] if found[1] else None


def _render(template: dict, record: dict, jinja: str, passage: str):
    """(instruction, answer, answer choices) as promptsource renders them."""
    import jinja2

    env = jinja2.Environment()
    env.globals["zip"] = zip
    env.filters["choice"] = random.Random(0).choice
    choices = []
    if template.get("answer_choices"):
        rendered = env.from_string(template["answer_choices"]).render(**record)
        choices = [c.strip() for c in rendered.split("|||")]
    text = env.from_string(jinja).render(**record, answer_choices=choices, copy_context=passage)
    instruction, answer = (part.strip() for part in text.split("|||"))
    return instruction, answer, choices


def _expected(kind: str, dataset: str, template: dict) -> str | None:
    """What the check says of the template's own answer: None, or a known false rejection."""
    if kind == "mcqa" and not template["metadata"]["choices_in_prompt"]:
        return "no_options"  # an mcqa template that lists no options
    if dataset == "ropes":
        return "not_in_context"  # ROPES answers come from the situation, not the passage
    return None


@pytest.mark.parametrize("case", _ctga_cases())
@pytest.mark.parametrize("passage", [PASSAGE, TRICKY_PASSAGE], ids=["plain", "tricky"])
def test_rendered_ctga_templates(case, passage):
    kind, dataset, expression, template = case
    jinja = _with_passage_slot(template["jinja"], expression)
    if jinja is None:
        pytest.skip("ctga skipped this template: it lacks the passage expression")
    record = RECORDS.get(dataset) or RECORDS[dataset.split("/")[0]]
    record = {key: passage if value == PASSAGE else value for key, value in record.items()}
    instruction, answer, choices = _render(template, record, jinja, passage)
    assert passage in instruction
    expected = _expected(kind, dataset, template)
    assert check(kind, instruction, answer, passage) == expected
    if template["metadata"]["choices_in_prompt"] and kind != "exqa":
        for choice in choices:
            assert check(kind, instruction, choice, passage) is None, choice
    rejection = "no_options" if expected == "no_options" else EXPECTED_REJECTION[kind]
    offered = {c.lower() for c in choices}
    for wrong in WRONG[kind]:
        if wrong.lower() not in offered:
            assert check(kind, instruction, wrong, passage) == rejection, wrong


def _squadshifts_rows() -> list:
    files = sorted((DATA / "squadshifts").glob("*_sample.jsonl"))
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{DATA} is absent"))]
    return [pytest.param(file, id=file.stem) for file in files]


def cuts_a_word(span: str, text: str) -> bool:
    """Every place `span` stands in `text` begins or ends inside a word."""
    starts = [m.start() for m in re.finditer(re.escape(span), text)]
    inside = [
        (i and text[i - 1].isalnum() and span[0].isalnum())
        or (text[i + len(span) : i + len(span) + 1].isalnum() and span[-1].isalnum())
        for i in starts
    ]
    return bool(starts) and all(inside)


@pytest.mark.parametrize("path", _squadshifts_rows())
def test_real_squadshifts_answers_are_in_their_context(path):
    """Every gold answer passes, with "The" before it and "!" after it too, but the few that
    annotators cut out of a word ("vertical" of "vertically", "200" of "200HP")."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    cut = 0
    for row in rows:
        instruction = f"{row['context']}\n\nQ: {row['question']}\n\nA:"
        for answer in row["answers"]:
            if cuts_a_word(answer, row["context"]):
                cut += 1
                assert check("exqa", instruction, answer, row["context"]) == "not_in_context"
                continue
            assert check("exqa", instruction, answer, row["context"]) is None, answer
            assert check("exqa", instruction, f"The {answer.lower()}!", row["context"]) is None
        other = next(r["context"] for r in rows if r["context"] != row["context"])
        assert check("exqa", instruction, other, row["context"]) == "not_in_context"
    assert cut <= sum(len(row["answers"]) for row in rows) // 100


@pytest.mark.parametrize("path", _squadshifts_rows())
def test_any_run_of_a_passages_words_passes_and_a_piece_of_a_word_does_not(path):
    rng = random.Random(0)
    for line in path.read_text(encoding="utf-8").splitlines()[:200]:
        context = json.loads(line)["context"]
        words = context.split()
        for _ in range(20):
            start = rng.randrange(len(words))
            run = " ".join(words[start : start + rng.randrange(1, 8)])
            if answer_words(run):
                assert extractive_answer("", run, context) is None, run
            word = rng.choice(words)
            piece = word[1:-1]
            if piece.isalpha() and len(piece) > 2 and not re.search(rf"\b{piece}\b", context, re.I):
                assert extractive_answer("", piece, context) == "not_in_context"
