"""Evaluation of a target model: converters on the real labelled sets, schema errors, prompts,
scores of the tiny model against a plain unbatched computation, greedy generation against
model.generate, and `bonito evaluate` end to end."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from transformers import AutoTokenizer

from bonito.errors import BonitoError
from bonito.evaluation import Example, evaluate, load_examples, select_templates, target_prompt
from bonito.evaluation.evaluate import first_line, load_target
from bonito.evaluation.prompts import answer_ids, prompt_ids
from bonito.evaluation.scoring import best_choice, generate_greedy, score_choices

DATA = Path(__file__).parents[2] / "shared" / "data"
CONTEXTS = [
    "The bridge was closed for two weeks while engineers replaced its cables.",
    "Most cats sleep for twelve to sixteen hours a day, mostly in short naps.",
    "The library lends laptops to students, who must return them by the evening.",
    "Rain fell on every day of the festival.",
    "A new bakery opened on the corner of Main Street; it sells rye bread, pastries and coffee "
    "from six in the morning until noon, every day but Sunday.",
]
QUESTIONS = [
    "Was the bridge closed?",
    "Do cats sleep a lot?",
    "Can students keep the laptops overnight?",
    "Was the festival dry?",
    "Is the bakery open on Sunday?",
]
CHOICES = [("Yes", "No"), ("Yes", "No", "Maybe"), ("Yes", "No"), ("Yes", "No, not at all"),
           ("Yes", "No", "Maybe")]  # fmt: skip
LABELS = [0, 0, 1, 1, 1]
YNQA = [
    Example(str(i), c, q, ch, label)
    for i, (c, q, ch, label) in enumerate(zip(CONTEXTS, QUESTIONS, CHOICES, LABELS, strict=True))
]
EXQA = [
    Example("0", CONTEXTS[0], "How long was the bridge closed?", answers=("two weeks",)),
    Example("1", CONTEXTS[2], "What does the library lend?", answers=("laptops",)),
    Example("2", CONTEXTS[4], "What does the bakery sell?", answers=("rye bread, pastries",)),
]


@pytest.fixture(scope="module")
def target(tiny_model):
    return load_target(str(tiny_model), device="cpu")


def direct_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """Summed log-probability of the answer's tokens after BOS + prompt, one sequence at a time."""
    prompt_tokens = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]
    answer_tokens = tokenizer(answer, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([prompt_tokens + answer_tokens])).logits[0]
    logprobs = logits.log_softmax(-1)
    start = len(prompt_tokens) - 1
    return sum(logprobs[start + i, token].item() for i, token in enumerate(answer_tokens))


def test_evaluate_equals_a_direct_computation(target):
    tokenizer, model = target
    templates = select_templates("ynqa", "2")
    result = evaluate(model, tokenizer, YNQA, "ynqa", templates, batch_size=2)
    assert [r.template for r in result.templates] == [t.name for t in templates]
    for template, scored in zip(templates, result.templates, strict=True):
        predicted = []
        for example in YNQA:
            prompt = "<|input|>\n" + template.render(example) + "\n<|output|>\n"
            scores = [direct_logprob(model, tokenizer, prompt, c) for c in example.choices]
            predicted.append(example.choices[scores.index(max(scores))])
        gold = [e.choices[e.label] for e in YNQA]
        assert scored.predictions == predicted
        right = [p == g for p, g in zip(predicted, gold, strict=True)]
        assert scored.scores["accuracy"] == pytest.approx(sum(right) / len(right))
        f1s = []
        for label in set(gold) | set(predicted):
            hits = sum(p == g == label for p, g in zip(predicted, gold, strict=True))
            f1s.append(2 * hits / (gold.count(label) + predicted.count(label)))
        assert scored.scores["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))
    for metric in ("accuracy", "macro_f1"):
        mean = sum(r.scores[metric] for r in result.templates) / len(templates)
        assert result.average[metric] == pytest.approx(mean)
    assert result.ids == [e.id for e in YNQA]
    json.dumps(result.to_dict())


def test_batched_scores_equal_one_by_one_and_direct(target):
    tokenizer, model = target
    template = select_templates("ynqa")[3]
    texts = [target_prompt(template.render(e), tokenizer) for e in YNQA]
    prompts = [prompt_ids(text, tokenizer) for text in texts]
    choices = [[answer_ids(c, tokenizer) for c in e.choices] for e in YNQA]
    assert max(len(c) for options in choices for c in options) > 1  # continuations are scored
    pad = tokenizer.pad_token_id
    batched = score_choices(model, prompts, choices, pad_id=pad, batch_size=4)
    single = score_choices(model, prompts, choices, pad_id=pad, batch_size=1)
    direct = [
        [direct_logprob(model, tokenizer, text, c) for c in e.choices]
        for text, e in zip(texts, YNQA, strict=True)
    ]
    for b, s, d in zip(batched, single, direct, strict=True):
        assert b == pytest.approx(s, abs=1e-4)
        assert b == pytest.approx(d, abs=1e-4)


def test_equal_choices_tie_and_the_first_wins(target):
    tokenizer, model = target
    prompt = prompt_ids(target_prompt("Is it?", tokenizer), tokenizer)
    yes = answer_ids("Yes", tokenizer)
    [scores] = score_choices(model, [prompt], [[yes, yes]], pad_id=tokenizer.pad_token_id)
    assert scores[0] == scores[1] and best_choice(scores) == 0


def test_greedy_answers_equal_model_generate(target):
    tokenizer, model = target
    template = select_templates("exqa")[0]
    prompts = [prompt_ids(target_prompt(template.render(e), tokenizer), tokenizer) for e in EXQA]
    batched = generate_greedy(model, prompts, pad_id=tokenizer.pad_token_id, batch_size=3)
    expected = []
    for ids in prompts:
        out = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=25, pad_token_id=3
        )[0, len(ids) :].tolist()
        expected.append(out)
    strip = [[t for t in row if t != tokenizer.pad_token_id] for row in batched]
    assert strip == expected and all(len(row) <= 25 for row in expected)
    result = evaluate(model, tokenizer, EXQA, "exqa", [template], batch_size=2)
    answers = [first_line(tokenizer.decode(row, skip_special_tokens=True)) for row in expected]
    assert result.templates[0].predictions == answers
    assert set(result.average) == {"exact_match", "f1"}


def test_prompt_formats(target):
    tokenizer, _ = target
    assert target_prompt("Is it?", tokenizer) == "<|input|>\nIs it?\n<|output|>\n"
    with pytest.raises(BonitoError, match="no chat template"):
        target_prompt("Is it?", tokenizer, "chat")
    with pytest.raises(BonitoError, match="Unknown prompt format"):
        target_prompt("Is it?", tokenizer, "alpaca")


def test_chat_prompt_has_one_bos(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    )
    text = target_prompt("Is it?", tokenizer, "chat")
    assert text == "<s>[INST] Is it? [/INST]"
    ids = prompt_ids(text, tokenizer)
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert prompt_ids("Is it?", tokenizer)[0] == tokenizer.bos_token_id


CONVERTED = [
    ("pubmedqa", "pubmedqa/pubmedqa_pqal.jsonl", "ynqa", 1000, (552, 338, 110)),
    ("contractnli", "contractnli/contractnli_test_sample.jsonl", "nli", 500, (219, 64, 217)),
    ("vitaminc", "vitaminc/vitaminc_sample.jsonl", "nli", 400, (154, 134, 112)),
    ("squadshifts", "squadshifts/reddit_sample.jsonl", "exqa", 500, None),
    ("policyqa", "privacy/policyqa_test_sample.jsonl", "exqa", 500, None),
]
"""Each set's rows and, for classification, its gold answers Yes, No, Maybe (SOURCE.md counts)."""


@pytest.mark.parametrize(("data_format", "file", "task", "rows", "labels"), CONVERTED)
def test_converters_on_the_shared_sets(data_format, file, task, rows, labels):
    path = DATA / file
    if not path.is_file():
        pytest.skip(f"{path} is not here (../shared/data holds the labelled sets)")
    examples = load_examples(path, task, data_format)
    assert len(examples) == rows == len({e.id for e in examples})
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert examples[0].id == str(first["id"])
    assert examples[0].context in first.values() and examples[0].question in first.values()
    if labels:
        assert Counter(e.choices[e.label] for e in examples) == dict(
            zip(("Yes", "No", "Maybe"), labels, strict=True)
        )
    else:
        assert examples[0].answers == tuple(first["answers"])
        assert all(e.answers and not e.choices for e in examples)


GOOD = {
    "id": "a",
    "context": "Some text.",
    "question": "Is it?",
    "choices": ["Yes", "No"],
    "label": 1,
}


@pytest.mark.parametrize(
    ("line", "task", "message"),
    [
        ("{not json", "ynqa", "line 2 is not JSON"),
        ("[1, 2]", "ynqa", "line 2 is not a JSON object"),
        (json.dumps({**GOOD, "context": ""}), "ynqa", "line 2 needs 'context'"),
        (json.dumps({**GOOD, "label": 2}), "ynqa", r"line 2 needs 'label', the index \(0 to 1\)"),
        (json.dumps({**GOOD, "label": True}), "ynqa", "line 2 needs 'label'"),
        (json.dumps({**GOOD, "choices": ["Yes"]}), "ynqa", "at least 2 non-empty strings"),
        (json.dumps({**GOOD, "choices": ["Yes", "Yes"]}), "ynqa", "repeats a choice"),
        (json.dumps(GOOD), "nli", "line 2 needs 'hypothesis'"),
        (json.dumps(GOOD), "exqa", "line 2 needs 'answers'"),
    ],
)
def test_schema_errors_name_the_line(tmp_path, line, task, message):
    path = tmp_path / "data.jsonl"
    first = {**GOOD, "hypothesis": "It is.", "answers": ["text"]}
    path.write_text(json.dumps(first) + "\n" + line + "\n")
    with pytest.raises(BonitoError, match=message):
        load_examples(path, task)


def test_converter_errors_and_options(tmp_path):
    path = tmp_path / "pubmedqa.jsonl"
    record = {"id": "1", "context": "Text.", "question": "Does it?", "final_decision": "yes"}
    path.write_text(json.dumps(record) + "\n\n" + json.dumps({**record, "final_decision": "no"}))
    assert [e.label for e in load_examples(path, "yes-no question answering", "pubmedqa")] == [0, 1]
    assert len(load_examples(path, "ynqa", "pubmedqa", limit=1)) == 1
    path.write_text(json.dumps({**record, "final_decision": "perhaps"}))
    with pytest.raises(BonitoError, match="line 1 has the label 'perhaps'"):
        load_examples(path, "ynqa", "pubmedqa")
    path.write_text(json.dumps({"id": "1", "context": "Text."}))
    with pytest.raises(BonitoError, match="line 1 has no 'final_decision' field"):
        load_examples(path, "ynqa", "pubmedqa")
    with pytest.raises(BonitoError, match="pubmedqa data is ynqa, not nli"):
        load_examples(path, "nli", "pubmedqa")
    with pytest.raises(BonitoError, match="Evaluation handles"):
        load_examples(path, "summarization")
    with pytest.raises(BonitoError, match="Unknown data format"):
        load_examples(path, "ynqa", "boolq")
    with pytest.raises(BonitoError, match="not a file"):
        load_examples(tmp_path / "missing.jsonl", "ynqa")


@pytest.mark.parametrize(
    ("record", "task", "advice"),
    [
        (
            {"id": "1", "context": "T.", "question": "Does it?", "final_decision": "yes"},
            "ynqa",
            "(it looks like pubmedqa data: use data_format pubmedqa (--data-format pubmedqa)).",
        ),
        (
            {"id": "1", "premise": "T.", "hypothesis": "It is.", "label": "entailment"},
            "ynqa",
            "(it looks like contractnli data: use data_format contractnli and task_type nli "
            "(--data-format contractnli -t nli)).",
        ),
        (
            {"id": "1", "evidence": "T.", "claim": "It is.", "label": "SUPPORTS"},
            "nli",
            "(it looks like vitaminc data: use data_format vitaminc (--data-format vitaminc)).",
        ),
        ({"id": "1", "text": "T."}, "ynqa", "(see the schema in docs/evaluation.md, or name"),
    ],
)
def test_a_known_sets_own_format_is_named(tmp_path, record, task, advice):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(BonitoError) as raised:
        load_examples(path, task)
    assert advice in str(raised.value)


def test_template_selection():
    assert len(select_templates("nli")) == 5
    assert [t.name for t in select_templates("exqa", "q_a, extract")] == ["q_a", "extract"]
    with pytest.raises(BonitoError, match="1 to 5"):
        select_templates("ynqa", "6")
    with pytest.raises(BonitoError, match="No ynqa template is called nope"):
        select_templates("ynqa", "exam,nope")


def test_cli_evaluate_writes_scores(tiny_model, tmp_path, capsys, monkeypatch):
    data = tmp_path / "ynqa.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": e.id, "context": e.context, "question": e.question,
                        "choices": list(e.choices), "label": e.label}) + "\n"
            for e in YNQA
        )
    )  # fmt: skip
    out = tmp_path / "scores" / "ynqa.json"
    args = ["evaluate", "--model", tiny_model, "--data", data, "-t", "ynqa", "--limit", 4]
    code, stdout, stderr = run_cli(
        [*args, "--templates", "exam,after_reading", "--batch-size", 3, "-o", out],
        capsys,
        monkeypatch,
    )
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["examples"] == 4 and result["ids"] == ["0", "1", "2", "3"]
    assert [t["template"] for t in result["templates"]] == ["exam", "after_reading"]
    assert result["model"] == str(tiny_model) and result["data"] == str(data)
    assert "average" in stdout and "after_reading" in stdout
    code, _, stderr = run_cli([*args, "--adapter", tmp_path], capsys, monkeypatch)
    assert code == 1 and "no adapter_config.json" in stderr


def test_adapter_is_applied(tiny_model, tmp_path, target):
    from peft import LoraConfig, get_peft_model

    tokenizer, base = target
    _, fresh = load_target(str(tiny_model), device="cpu")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trained = get_peft_model(fresh, config).eval()  # random, non-zero LoRA weights
    trained.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    _, loaded = load_target(str(tiny_model), tmp_path / "adapter", device="cpu")
    prompt = [prompt_ids(target_prompt("Is it?", tokenizer), tokenizer)]
    choices = [[answer_ids("Yes", tokenizer), answer_ids("No, not at all", tokenizer)]]
    scores = [
        score_choices(model, prompt, choices, pad_id=tokenizer.pad_token_id)[0]
        for model in (base, trained, loaded)
    ]
    assert scores[2] == pytest.approx(scores[1], abs=1e-4)  # merged into the weights
    assert scores[2] != pytest.approx(scores[0], abs=1e-3)
