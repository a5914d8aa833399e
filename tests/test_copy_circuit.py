"""The tiny generator's hand-set copy circuit (bonito.train.copy_circuit), on an untrained model."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from bonito import build_prompt
from bonito.prompt.format import PIPE
from bonito.train import copy_circuit
from bonito.train.tiny_model import (
    OPENING_QUESTION,
    build_tokenizer,
    load_examples,
    save_random_model,
    target_text,
)

PASSAGES = [
    "Migrating songbirds navigate at night using the stars, the Earth's magnetic field and "
    "landmarks such as coastlines. Young birds on their first journey rely more on instinct.",
    "The museum reopened in March after a two-year renovation that added a glass roof over the "
    "central courtyard and a new wing for temporary exhibitions.",
    "Zorbulan vettrick oslo mip. Quandary fezzle outpaced the brindled yawl near Kettering.",
]


@pytest.fixture(scope="module")
def wired(tmp_path_factory):
    examples = load_examples()
    written = [(build_prompt(e["context"], e["task_type"]), target_text(e)) for e in examples]
    tokenizer = build_tokenizer([text for pair in written for text in pair])
    folder = tmp_path_factory.mktemp("wired")
    torch.manual_seed(0)
    save_random_model(tokenizer, folder, copy_circuit_seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    return model.eval(), tokenizer


def run(wired, passage: str, task_type: str, written: str):
    """Token ids of the prompt and of `written` after it, with the model's output on both."""
    model, tokenizer = wired
    prompt = tokenizer(build_prompt(passage, task_type)).input_ids
    after = tokenizer(written, add_special_tokens=False).input_ids
    with torch.no_grad():
        output = model(torch.tensor([prompt + after]), output_attentions=True)
    return prompt, after, output


def first_sentence(passage: str) -> str:
    return passage.split(".")[0]


def test_in_an_extractive_answer_it_copies_the_passage_from_its_first_word(wired):
    right = total = 0
    for passage in PASSAGES:
        answer = first_sentence(passage)
        lead = f"{OPENING_QUESTION}\n{PIPE}\n"
        prompt, after, output = run(wired, passage, "exqa", lead + answer)
        start = len(prompt) + len(wired[1](lead, add_special_tokens=False).input_ids)
        predicted = output.logits[0, start - 1 : -1].argmax(-1).tolist()
        expected = after[start - len(prompt) :]
        assert predicted[0] == expected[0]  # the passage's first token, right after the pipe
        right += sum(p == e for p, e in zip(predicted, expected, strict=True))
        total += len(expected)
    assert right / total >= 0.75


def induction_to_bos(output, positions: range) -> float:
    """The mean attention the induction head (layer 1, query head 0) pays to BOS at `positions`."""
    attention = output.attentions[1][0, 0]
    return attention[positions.start : positions.stop, 0].mean().item()


def test_elsewhere_the_induction_head_rests_on_bos(wired):
    passage = PASSAGES[0]
    copied = first_sentence(passage)
    for task_type, written in [
        ("exqa", f"{{{{context}}}}\n\nQ: {copied}"),  # the instruction: before the pipe
        ("nli", f"{OPENING_QUESTION}\n{PIPE}\n{copied}"),  # another task type's answer
    ]:
        prompt, after, output = run(wired, passage, task_type, written)
        assert induction_to_bos(output, range(len(prompt), len(prompt) + len(after))) > 0.95
    prompt, after, output = run(wired, passage, "exqa", f"{OPENING_QUESTION}\n{PIPE}\n{copied}")
    answer = range(len(prompt) + len(after) - 5, len(prompt) + len(after))
    assert induction_to_bos(output, answer) < 0.05


def test_training_leaves_the_wired_entries_as_set(wired):
    original, tokenizer = wired
    model = type(original)(original.config)
    model.load_state_dict(original.state_dict())
    copy_circuit.keep_wired(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ids = torch.tensor([tokenizer(build_prompt(PASSAGES[1], "exqa") + PASSAGES[1]).input_ids])
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    masks = copy_circuit.wired_masks(model)
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        kept = mask.bool()
        assert torch.equal(parameters[name][kept], before[name][kept]), name
        if not kept.all():
            assert not torch.equal(parameters[name][~kept], before[name][~kept]), name
