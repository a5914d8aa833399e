"""The offline tiny generator (built by `bonito train`'s path, tested in test_training.py)."""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralForCausalLM

from bonito import TASK_TYPES, SamplingParams, Task, build_prompt, parse_task
from bonito.engines import generate_all
from bonito.engines.transformers import TransformersEngine
from bonito.train.tiny_model import build_tiny_model, load_examples

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
MARKERS = ["<|tasktype|>", "<|context|>", "<|task|>", "<|pipe|>", "{{context}}"]
HELD_OUT = [
    "The library will close early on Friday for staff training. Books due that day can be "
    "returned on Saturday without a late fee.",
    "Glass recycling saves energy because melting old glass needs less heat than making new "
    "glass from sand. Many towns ask residents to rinse jars and remove the lids first.",
    "Der Zug nach München fährt um 9:15 Uhr ab — bitte rechtzeitig einsteigen. Tickets kosten "
    "29 € und gelten den ganzen Tag.",
    "Participants who took the supplement for twelve weeks reported less joint pain than those "
    "given a placebo (p = 0.03). No serious adverse events occurred, although three people "
    "stopped early because of mild stomach upset.",
    "Update: switching the router from channel 6 to channel 11 fixed the dropouts. My laptop "
    "now keeps a stable connection even in the kitchen, which never happened before, and the "
    "video calls no longer freeze.",
    "Our community orchestra began twenty years ago with nine players in a church hall. Today "
    "it has more than sixty members, from teenagers to retired teachers, and gives four free "
    "concerts a year. Rehearsals are on Wednesday evenings, and anyone who can read music is "
    "welcome to join, although string players are especially needed. The orchestra pays for "
    "its sheet music and the hall with small donations collected at each concert, and a local "
    "bakery provides coffee and pastries during the interval. Last spring the group played "
    "its first concert outdoors, in the park by the river, and more than eight hundred people "
    "came to listen despite the cold wind.",
]
SAMPLING = SamplingParams(temperature=0.5, max_tokens=128, seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def engine(tiny_model):
    return TransformersEngine(str(tiny_model), device="cpu")


def parse_rate(engine, items: list[tuple[str, str]]) -> float:
    completions = generate_all(engine, [build_prompt(c, t) for c, t in items], SAMPLING)
    parsed = [
        parse_task(c[0].text, context) for c, (context, _) in zip(completions, items, strict=True)
    ]
    return sum(isinstance(p, Task) for p in parsed) / len(items)


def test_examples_cover_every_task_type_with_a_placeholder():
    examples = load_examples()
    assert {e["task_type"] for e in examples} == {t.short for t in TASK_TYPES}
    assert all(e["context"] and e["output"] for e in examples)
    assert sum("{{context}}" in e["input"] for e in examples) > 0.9 * len(examples)


def test_tokenizer_prepends_bos_exactly_once(tokenizer):
    for text in ["hello", build_prompt("A cat sat.", "nli")]:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1
        assert ids[1:] == tokenizer(text, add_special_tokens=False).input_ids


def test_markers_are_ordinary_text_and_any_text_round_trips(tokenizer):
    context = "Ünïcödé passage — 東京 🐟, ΔΨm ± 0.5 µg, \t tabs and  double  spaces."
    text = build_prompt(context, "nli") + "{{context}}\n\nTrue or false?\n<|pipe|>\nTrue"
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    assert not special & set(MARKERS)
    for marker in MARKERS:
        assert len(tokenizer(marker, add_special_tokens=False).input_ids) == 1


def test_saved_model_loads_with_auto_classes(tiny_model, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert isinstance(model, MistralForCausalLM)
    assert model.config.max_position_embeddings == 4096
    assert model.config.vocab_size == len(tokenizer)
    generation = model.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3


@pytest.mark.heavy
def test_same_seed_gives_identical_files(tmp_path):
    deterministic = torch.are_deterministic_algorithms_enabled()
    first, again, other = (
        build_tiny_model(tmp_path / name, seed=seed, epochs=0.05)
        for name, seed in [("first", 1), ("again", 1), ("other", 2)]
    )
    for name in ["model.safetensors", "tokenizer.json", "config.json"]:
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_parse_rate_on_held_out_passages(engine):
    items = [(context, t.short) for context in HELD_OUT for t in TASK_TYPES]
    assert parse_rate(engine, items) >= 0.8


def test_parse_rate_on_real_passages(engine):
    files = sorted(SHARED_DATA.glob("**/*passages.jsonl"))
    if not files:
        pytest.skip(f"shared data not found at {SHARED_DATA} (real passages for this check)")
    rng = random.Random(0)
    items = []
    for i in range(100):
        lines = files[i % len(files)].read_text(encoding="utf-8").splitlines()
        items.append((json.loads(rng.choice(lines))["text"], rng.choice(TASK_TYPES).short))
    assert parse_rate(engine, items) >= 0.8


def test_most_samples_pass_the_checks_on_passages_it_never_saw(engine, tmp_path):
    """`make demo`'s run at the default sampling (temperature 0.5, top_p 0.95), four samples a
    request: on these passages, held out from its training, at least 70% of the samples pass
    the checks, a quarter of the extractive ones included (their answers copied from the
    passage by the copy circuit)."""
    from bonito.generate.mix import TaskMix
    from bonito.runs.run import RunConfig, generate_run

    examples = Path(__file__).parents[1] / "examples" / "passages.jsonl"
    seen = {e["context"] for e in load_examples()}
    assert not {json.loads(line)["text"] for line in examples.read_text().splitlines()} & seen
    config = RunConfig(
        engine.model,
        (str(examples),),
        TaskMix.parse(["ynqa", "exqa", "nli"]),
        3,
        SamplingParams(n=4, seed=0),
        dedup="off",
    )
    summary = generate_run(tmp_path / "run", config, lambda: engine).summary
    per_type = summary.samples // 3
    accepted = summary.accepted_by_type
    assert sum(accepted.values()) >= 0.7 * summary.samples, accepted
    assert accepted["exqa"] >= 0.25 * per_type, accepted
