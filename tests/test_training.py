"""Generator training (`bonito train`): tokenization, the held-out checks, LoRA and full training
of tiny models on ctga pairs built from templates, resume after SIGKILL, adapters in `generate`,
and a custom task type from its declaration to generated, checked tasks."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM
from typer.testing import CliRunner

from bonito import build_prompt
from bonito.cli import app
from bonito.errors import BonitoError
from bonito.prompt.format import PIPE, PLACEHOLDER
from bonito.prompt.task_types import TASK_TYPES_FILE, load_task_types, resolve_task_type
from bonito.train.ctga import TrainingPair, load_pairs
from bonito.train.generator import generator_scores, split_held_out
from bonito.train.tiny_model import build_tokenizer, save_random_model
from bonito.train.trainer import IGNORE_INDEX, Collator, Recipe, tokenize

runner = CliRunner()
BONITO = [sys.executable, "-c", "from bonito.cli import main; main()"]
LABELS = ["Markets", "Sport", "Politics", "Tech"]
TASK_TYPES_YAML = f"""\
- short: news_section
  name: news section classification
  description: Which section of our paper a story belongs in.
  check: label
  labels: {json.dumps(LABELS)}
"""
TEMPLATES_YAML = """\
dataset: mynews
templates:
  t-section: !Template
    answer_choices: Markets ||| Sport ||| Politics ||| Tech
    id: t-section
    jinja: '{{story}}

      Which section should run this story: Markets, Sport, Politics or Tech?
      ||| {{answer_choices[label]}}'
    name: section
    reference: ''
  t-desk: !Template
    answer_choices: Markets ||| Sport ||| Politics ||| Tech
    id: t-desk
    jinja: 'Story: {{story}}

      Desk (Markets, Sport, Politics, Tech)? ||| {{answer_choices[label]}}'
    name: desk
    reference: ''
  t-headline: !Template
    answer_choices: null
    id: t-headline
    jinja: '{{story}}

      Is this story about {{topic}}? ||| {{"Yes" if label == 0 else "No"}}'
    name: about
    reference: ''
"""
WORDS = {
    0: ["shares", "bank", "profit", "investors", "bond", "rates", "stocks"],
    1: ["striker", "goal", "match", "coach", "league", "season", "fans"],
    2: ["minister", "vote", "parliament", "election", "party", "law", "senate"],
    3: ["software", "chip", "startup", "phone", "network", "robot", "cloud"],
}


def news_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = i % 4
        words = rng.sample(WORDS[label], 4)
        story = (
            f"The {words[0]} and the {words[1]} made news on day {i}. "
            f"Reports said the {words[2]} followed the {words[3]}."
        )
        rows.append({"story": story, "label": label, "topic": rng.choice(WORDS[label])})
    return rows


@pytest.fixture(scope="module", autouse=True)
def registry():
    """The task types these tests register are forgotten after them."""
    from bonito.prompt import task_types

    tables = (task_types._BY_NAME, task_types._BY_SHORT, task_types._REGISTERED)
    saved = [dict(table) for table in tables]
    yield
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A custom task type, templates for it (and a yes-no one) and pairs built by the CLI."""
    root = tmp_path_factory.mktemp("train")
    (root / "templates" / "mynews").mkdir(parents=True)
    (root / "templates" / "mynews" / "templates.yaml").write_text(TEMPLATES_YAML, "utf-8")
    (root / "types.yaml").write_text(TASK_TYPES_YAML, "utf-8")
    (root / "annotations.csv").write_text(
        "dataset_name,dataset_config_name,template_name,task_type\n"
        "mynews,,section,news_section\nmynews,,desk,news section classification\n"
        "mynews,,about,ynqa\n",
        "utf-8",
    )
    rows = news_rows(240)
    (root / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    result = runner.invoke(
        app,
        [
            "ctga", "build", "--templates", str(root / "templates"),
            "--annotations", str(root / "annotations.csv"),
            "--dataset", f"mynews={root / 'news.jsonl'}:story",
            "--task-types", str(root / "types.yaml"), "-o", str(root / "pairs.jsonl"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"root": root, "pairs": root / "pairs.jsonl", "types": root / "types.yaml"}


@pytest.fixture(scope="module")
def fresh_base(tmp_path_factory, workspace) -> Path:
    """An untrained Mistral with a tokenizer that knows the text (it writes no task yet)."""
    pairs = load_pairs(str(workspace["pairs"]))
    tokenizer = build_tokenizer([p.source for p in pairs[:50]] + [p.target for p in pairs[:50]])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fresh-base")
    return save_random_model(tokenizer, path, hidden_size=64, max_positions=1024)


def train_args(data: Path, base: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--base-model", str(base), "--output", str(output),
        "--batch-size", "8", "--micro-batch-size", "8", "--held-out", "16",
        "--eval-generations", "16", "--eval-max-tokens", "48", "--logging-steps", "10", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, workspace, fresh_base) -> Path:
    """The fresh base trained (every weight) on the pairs with the CLI for 120 steps."""
    output = tmp_path_factory.mktemp("trained")
    args = train_args(workspace["pairs"], fresh_base, output, "--full", "--learning-rate", "3e-3")
    result = runner.invoke(app, [*args, "--max-steps", "120", "--eval-steps", "60"])
    assert result.exit_code == 0, result.output
    return output


# --- pieces -----------------------------------------------------------------------------------


def test_tokenize_is_bos_source_target_eos_with_labels_on_the_target(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    source = build_prompt("The river rose overnight.", "ynqa")
    target = f"{PLACEHOLDER}\n\nDid the river rise?\n{PIPE}\nYes"
    src = tokenizer(source, add_special_tokens=False).input_ids
    tgt = tokenizer(target, add_special_tokens=False).input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    examples = tokenize([(source, target)], tokenizer, Recipe())
    assert examples.items == [
        {
            "input_ids": [bos, *src, *tgt, eos],
            "labels": [IGNORE_INDEX] * (1 + len(src)) + tgt + [eos],
        }
    ]
    limits = Recipe(max_source_tokens=len(src), max_target_tokens=len(tgt))
    assert tokenize([(source, target)], tokenizer, limits).skipped == {"source_too_long": 1}
    limits = Recipe(max_source_tokens=len(src) + 1, max_target_tokens=len(tgt))
    examples = tokenize([(source, target), (source, "")], tokenizer, limits)
    assert examples.items == [] and examples.skipped == {"target_too_long": 1, "empty_target": 1}


def test_collator_pads_right_without_attention_or_loss():
    items = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [5, 8], "labels": [-100, 8]},
    ]
    batch = Collator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 8, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 8, -100]]


def test_recipe_defaults_are_the_model_cards_and_bad_values_are_refused():
    recipe = Recipe()
    assert (recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout) == (64, 4.0, 0.0)
    assert (recipe.learning_rate, recipe.weight_decay, recipe.max_grad_norm) == (1e-4, 0.0, 0.3)
    assert (recipe.batch_size, recipe.max_source_tokens, recipe.max_target_tokens) == (
        16,
        2048,
        2048,
    )
    assert recipe.quantized() == torch.cuda.is_available()
    with pytest.raises(BonitoError, match=r"^batch_size \(--batch-size\) 16 is not a multiple of"):
        Recipe(batch_size=16, micro_batch_size=3)
    with pytest.raises(BonitoError, match="LoRA rank"):
        Recipe(lora_r=0)
    with pytest.raises(BonitoError, match=r"seed \(--seed\) must be between 0 and 4294967295"):
        Recipe(seed=-1)


def test_full_fine_tuning_on_cuda_loads_the_base_unquantized(monkeypatch):
    """transformers' Trainer refuses a quantized model without adapters, after it has loaded:
    --full never quantizes by default, and refuses --quantize up front."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Recipe().quantized() and not Recipe(quantize=False).quantized()
    assert not Recipe(lora_r=None).quantized()
    with pytest.raises(BonitoError) as error:
        Recipe(lora_r=None, quantize=True)
    assert str(error.value) == (
        "A full fine-tuning, lora_r None (--full), trains every weight, which a 4-bit base "
        "cannot: drop quantize (--quantize), or train LoRA adapters."
    )


def test_held_out_split_takes_every_type_in_turn_and_is_seeded():
    pairs = [
        TrainingPair(f"s{i}", "t", ["a", "b", "c"][i % 3 if i < 90 else 0]) for i in range(100)
    ]
    train, held = split_held_out(pairs, 9, seed=1)
    assert len(held) == 9 and len(train) == 91
    assert sorted(p.task_type for p in held) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert not {p.source for p in held} & {p.source for p in train}
    assert split_held_out(pairs, 9, seed=1) == (train, held)
    assert len(split_held_out(pairs, 50, seed=1)[1]) == 10  # at most a tenth


def test_generator_scores_count_parses_and_the_passage_in_the_instruction():
    source = build_prompt("Tea is grown in Kenya.", "ynqa")
    pairs = [TrainingPair(source, "", "yes-no question answering")] * 3 + [
        TrainingPair(build_prompt("Rain.", "qa"), "", "question answering without choices")
    ]
    completions = [
        f"{PLACEHOLDER}\nIs tea grown in Kenya?\n{PIPE}\nYes",  # parses, placeholder
        f"Tea is grown in Kenya. Is it?\n{PIPE}\nYes",  # parses, passage written out
        "Is tea grown in Kenya? Yes",  # no pipe
        f"What falls?\n{PIPE}\nRain",  # parses, no passage
    ]
    scores = generator_scores(pairs, completions)
    assert scores["yes-no question answering"] == {
        "parse_rate": round(2 / 3, 4), "placeholder_rate": round(2 / 3, 4), "n": 3
    }  # fmt: skip
    assert scores["all"] == {"parse_rate": 0.75, "placeholder_rate": 0.5, "n": 4}


def test_load_pairs_reads_ctga_output_and_refuses_other_rows(workspace, tmp_path):
    pairs = load_pairs(str(workspace["pairs"]))
    assert {p.task_type for p in pairs} == {
        "news section classification", "yes-no question answering"
    }  # fmt: skip
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "not a pair"}\n', "utf-8")
    with pytest.raises(BonitoError, match="Row 1 of .* is not a bonito training pair"):
        load_pairs(str(other))


def test_task_type_declarations_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- short: x\n  name: y\n  check: label\n", "utf-8")
    with pytest.raises(BonitoError, match="needs `labels`"):
        load_task_types(bad)
    bad.write_text("- short: x\n  name: y\n  check: spelling\n", "utf-8")
    with pytest.raises(BonitoError, match="Unknown check 'spelling'"):
        load_task_types(bad)
    bad.write_text("- short: ynqa\n  name: my own yes-no\n", "utf-8")
    with pytest.raises(BonitoError, match="clashes with the existing 'ynqa'"):
        load_task_types(bad)
    bad.write_text("short: x\n", "utf-8")
    with pytest.raises(BonitoError, match="must hold a list"):
        load_task_types(bad)


# --- training end to end ----------------------------------------------------------------------


def test_pairs_of_the_custom_type_are_byte_exact(workspace):
    rows = [json.loads(line) for line in workspace["pairs"].read_text("utf-8").splitlines()]
    stories = {r["story"]: r for r in news_rows(240)}
    custom = [r for r in rows if r["template"] == "section"]
    assert custom
    for pair in custom:
        story = news_rows(240)[pair["row"]]["story"]
        label = LABELS[stories[story]["label"]]
        assert pair["source"] == build_prompt(story, "news_section")
        assert pair["source"].startswith("<|tasktype|>\nnews section classification\n")
        assert pair["target"] == (
            f"{PLACEHOLDER}\nWhich section should run this story: Markets, Sport, Politics or "
            f"Tech?\n{PIPE}\n{label}"
        )


def test_training_lowers_the_loss_and_raises_the_held_out_parse_rate(trained):
    summary = json.loads((trained / "training_summary.json").read_text("utf-8"))
    assert summary["steps"] == 120 and summary["resumed_from"] is None
    losses = [loss for _, loss in summary["train_loss"]]
    assert losses[-1] < losses[0] / 2
    evaluations = [json.loads(line) for line in (trained / "evaluations.jsonl").open()]
    assert [e["step"] for e in evaluations] == [0, 60, 120]
    assert evaluations[-1]["eval_loss"] < evaluations[0]["eval_loss"]
    first, last = (e["generations"]["all"] for e in (evaluations[0], evaluations[-1]))
    assert first["parse_rate"] == 0 and last["parse_rate"] >= 0.5
    assert last["placeholder_rate"] >= 0.5
    assert set(evaluations[-1]["generations"]) == {
        "all", "news section classification", "yes-no question answering"
    }  # fmt: skip
    assert summary["tokens_per_second"] > 0
    assert (trained / TASK_TYPES_FILE).is_file() and (trained / "model.safetensors").is_file()


def test_the_trained_generator_brings_its_task_type_to_generate_and_export(
    trained, workspace, tmp_path
):
    passages = tmp_path / "stories.jsonl"
    rows = news_rows(8, seed=5)
    passages.write_text("".join(json.dumps({"text": r["story"]}) + "\n" for r in rows), "utf-8")
    run = tmp_path / "run"
    args = [
        "generate", str(passages), "-t", "news_section", "--model", str(trained),
        "--engine", "transformers", "--output", str(run), "--temperature", "0",
        "--min-context-tokens", "1", "--max-tokens", "48",
    ]  # fmt: skip
    # a fresh process: the type is known there only through the generator's folder
    done = subprocess.run([*BONITO, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    from bonito.runs.store import RunStore

    tasks = list(RunStore(run / "run.sqlite", readonly=True).tasks())
    assert len(tasks) == 8 and {t["task_type"] for t in tasks} == {"news_section"}
    for task in tasks:  # the declared label check judged every answer
        if task["status"] == "accepted":
            assert task["output"] in LABELS
        elif task["reason"] == "not_a_label":
            assert task["output"] not in LABELS
    assert resolve_task_type("news_section").check("Which?", "Weather", "x") == "not_a_label"
    assert (run / TASK_TYPES_FILE).is_file()
    export = ["export", str(run), "-o", str(tmp_path / "export")]
    done = subprocess.run([*BONITO, *export], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "news section classification" in (tmp_path / "export" / "README.md").read_text()


def test_lora_adapter_trains_and_generate_loads_it_on_its_base(tiny_model, workspace, tmp_path):
    output = tmp_path / "adapter"
    args = train_args(workspace["pairs"], tiny_model, output, "--learning-rate", "1e-3")
    result = runner.invoke(
        app, [*args, "--max-steps", "12", "--eval-steps", "12", "--lora-r", "8", "--merged"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == str(tiny_model)
    adapted = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["eval_loss"][-1][1] < summary["eval_loss"][0][1]
    assert (output / "merged" / "config.json").is_file()

    from bonito.engines import generate_all
    from bonito.engines.transformers import TransformersEngine
    from bonito.prompt.sampling import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=24)
    prompt = [build_prompt(news_rows(1)[0]["story"], "ynqa")]
    from_adapter = generate_all(TransformersEngine(str(output), device="cpu"), prompt, greedy)
    merged = generate_all(TransformersEngine(str(output / "merged"), device="cpu"), prompt, greedy)
    assert from_adapter[0][0].text == merged[0][0].text


def test_a_pad_token_is_added_and_travels_with_the_adapter(tmp_path, workspace):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pairs = load_pairs(str(workspace["pairs"]))[:40]
    words = sorted({w for p in pairs for w in (p.source + " " + p.target).split()})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    base = tmp_path / "base"
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    MistralForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"source": p.source, "target": p.target}) + "\n" for p in pairs), "utf-8"
    )
    output = tmp_path / "out"
    args = train_args(data, base, output, "--max-steps", "2", "--lora-r", "4", "--held-out", "0")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = AutoTokenizer.from_pretrained(output)
    assert saved.pad_token == "<pad>" and saved.pad_token_id == len(vocab)

    from bonito.models import load_causal_lm

    model, loaded = load_causal_lm(str(output))
    assert model.get_input_embeddings().num_embeddings == len(vocab) + 1
    assert loaded.pad_token_id == len(vocab)


def test_a_different_training_in_the_same_folder_is_refused(trained, workspace, fresh_base):
    args = train_args(workspace["pairs"], fresh_base, trained, "--full", "--learning-rate", "1e-3")
    result = runner.invoke(app, [*args, "--max-steps", "120", "--eval-steps", "60"])
    assert isinstance(result.exception, BonitoError)
    assert "recipe.learning_rate: 0.003 -> 0.001" in str(result.exception)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--held-out", "-1"], "held_out (--held-out) must be at least 0, got -1."),
        (
            ["--eval-generations", "-2"],
            "eval_generations (--eval-generations) must be at least 0, got -2.",
        ),
        (["--max-steps", "0"], "max_steps (--max-steps) must be at least 1, got 0."),
        (
            ["--full", "--merged"],
            "merged (--merged) folds LoRA adapters into their base, and a full fine-tuning",
        ),
        (["--optimizer", "nonsense"], "Unknown optimizer 'nonsense'"),
    ],
)
def test_nonsense_training_values_are_refused(workspace, fresh_base, tmp_path, extra, message):
    result = runner.invoke(app, train_args(workspace["pairs"], fresh_base, tmp_path / "g", *extra))
    assert isinstance(result.exception, BonitoError)
    assert message in str(result.exception)
    assert not (tmp_path / "g").exists()


def test_a_short_training_logs_its_last_step_and_writes_a_model_card(
    workspace, fresh_base, tmp_path
):
    output = tmp_path / "generator"
    args = train_args(workspace["pairs"], fresh_base, output, "--max-steps", "3", "--lora-r", "4")
    result = runner.invoke(app, [*args, "--held-out", "0", "--save-steps", "0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "training_summary.json").read_text())
    assert [step for step, _ in summary["train_loss"]] == [1, 3]  # --logging-steps 10

    card = (output / "README.md").read_text()
    assert "More Information Needed" not in card
    assert "A bonito generator" in card and f'base_model: "{fresh_base}"' in card
    pairs = load_pairs(str(workspace["pairs"]))
    assert f"{len(pairs)} ctga pairs from `{workspace['pairs']}`" in card
    for kind in {p.task_type for p in pairs}:
        count = sum(p.task_type == kind for p in pairs)
        assert f"| {kind} | {count} |" in card
    assert f"--model {output}" in card and "bonito generate" in card
    assert f'AutoPeftModelForCausalLM.from_pretrained("{output}")' in card
    assert "| lora_r | 4 |" in card and "3 optimizer steps, train loss" in card


def test_unknown_task_types_in_pairs_need_a_declaration(tmp_path, fresh_base):
    data = tmp_path / "pairs.jsonl"
    source = "<|tasktype|>\nrecipe writing\n<|context|>\nFlour.\n<|task|>\n"
    data.write_text(json.dumps({"source": source, "target": "x"}) + "\n", "utf-8")
    result = runner.invoke(app, train_args(data, fresh_base, tmp_path / "out"))
    assert isinstance(result.exception, BonitoError)
    assert "task type 'recipe writing', which is not known" in str(result.exception)


@pytest.mark.heavy
def test_training_killed_mid_run_resumes_from_the_last_checkpoint(workspace, fresh_base, tmp_path):
    output = tmp_path / "resumed"
    args = train_args(workspace["pairs"], fresh_base, output, "--full", "--learning-rate", "3e-3")
    args += "--max-steps 40 --save-steps 10 --eval-steps 40 --eval-generations 0".split()
    args += ["--task-types", str(workspace["types"])]  # a fresh process must be told
    command = [*BONITO, *args]
    log = (tmp_path / "log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=log)
    checkpoints = output / "checkpoints"
    deadline = time.monotonic() + 240
    while not (checkpoints / "checkpoint-20" / "trainer_state.json").is_file():
        assert process.poll() is None, (tmp_path / "log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "training_summary.json").exists()
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["steps"] == 40
    resumed = int(summary["resumed_from"].split("-")[1])
    assert resumed >= 20
    steps = [step for step, _ in summary["train_loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(
    not (SHARED / "promptsource-templates" / "squad" / "templates.yaml").is_file()
    or not (SHARED / "squadshifts" / "new_wiki_sample.jsonl").is_file(),
    reason="shared promptsource templates and SQuADShifts sample are not available",
)
def test_training_on_pairs_from_real_templates_and_real_passages(fresh_base, tmp_path):
    """Real promptsource squad templates over real SQuADShifts rows, then a short training."""
    rows = [json.loads(line) for line in (SHARED / "squadshifts" / "new_wiki_sample.jsonl").open()]
    squad = tmp_path / "squad.jsonl"
    squad.write_text(
        "".join(
            json.dumps(
                row | {"answers": {"text": row["answers"], "answer_start": row["answer_starts"]}}
            )
            + "\n"
            for row in rows[:48]
        ),
        "utf-8",
    )
    (tmp_path / "types.csv").write_text(
        "dataset_name,dataset_config_name,template_name,task_type\n"
        "squad,,answer_question_given_context,exqa\nsquad,,given_context_generate_question,qg\n",
        "utf-8",
    )
    pairs = tmp_path / "pairs.jsonl"
    built = runner.invoke(
        app,
        [
            "ctga", "build", "--templates", str(SHARED / "promptsource-templates"),
            "--annotations", str(tmp_path / "types.csv"), "--dataset", f"squad={squad}:context",
            "-o", str(pairs),
        ],
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    loaded = load_pairs(str(pairs))
    assert len(loaded) == 48
    assert {p.task_type for p in loaded} == {"extractive question answering", "question generation"}
    output = tmp_path / "generator"
    args = train_args(
        pairs, fresh_base, output, "--full", "--learning-rate", "3e-3", "--held-out", "4"
    )
    result = runner.invoke(
        app, [*args, "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "24"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["pairs"]["train"] + summary["pairs"]["held_out"] == 48
    assert summary["eval_loss"][-1][1] < summary["eval_loss"][0][1]


def test_resume_takes_the_newest_complete_checkpoint(tmp_path):
    """A run killed while saving leaves a checkpoint without trainer_state.json (written last)."""
    from bonito.train.trainer import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step, complete in [(9, True), (10, True), (20, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
