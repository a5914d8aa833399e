"""Adapting a target model (`bonito finetune`, `bonito adapt`): tasks read from runs and every
export format, the pairs trained on, the paper's steps, fine-tuning that lowers the loss, resumes
from a checkpoint and refuses other settings, continued pretraining on passage chunks, and the
whole loop on slices of PubMedQA and ContractNLI with the tiny model as generator and target.
The tiny model's scores mean nothing: these tests check mechanics, not gains."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from bonito.adapt import adaptation
from bonito.adapt.adaptation import (
    TARGET_RECIPE,
    continued_pretraining,
    decontaminated_pairs,
    finetune,
    load_tasks,
    paper_steps,
    passage_chunks,
    target_examples,
)
from bonito.cli import app
from bonito.errors import BonitoError
from bonito.generate.mix import TaskMix
from bonito.prompt.sampling import SamplingParams
from bonito.publish.decontamination import EvaluationData
from bonito.publish.export import export_run
from bonito.read.config import Chunking
from bonito.runs.run import RunConfig, generate_run
from bonito.runs.store import RunStore
from bonito.train.trainer import IGNORE_INDEX, Recipe

runner = CliRunner()
ROOT = Path(__file__).parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"{DATA} (the shared real data) is not on this machine"
)
SMALL = ["--lora-r", "8", "--batch-size", "4", "--micro-batch-size", "4", "--logging-steps", "1"]


@pytest.fixture(scope="module")
def run_folder(tiny_model, tmp_path_factory) -> Path:
    """A run of the tiny generator on the example passages: yes-no and NLI tasks, two a prompt."""
    mix = TaskMix.parse(["ynqa", "nli"])
    config = RunConfig(
        str(tiny_model),
        (str(ROOT / "examples" / "passages.jsonl"),),
        mix,
        2,
        SamplingParams(n=2, seed=0),
        chunking=Chunking(max_tokens=128, min_tokens=16),
    )
    folder = tmp_path_factory.mktemp("adapt") / "run"
    from bonito.engines.transformers import TransformersEngine

    generate_run(folder, config, lambda: TransformersEngine(str(tiny_model), device="cpu"))
    return folder


def list_tasks(run: Path) -> list[dict]:
    store = RunStore(run / "run.sqlite", readonly=True)
    try:
        return list(store.tasks(("accepted",)))
    finally:
        store.close()


def accepted(run: Path) -> list[tuple[str, str]]:
    return [(t["input"], t["output"]) for t in list_tasks(run)]


# --- reading tasks ----------------------------------------------------------------------------


def test_tasks_are_read_from_runs_and_from_every_export_format(run_folder, tmp_path):
    tasks = accepted(run_folder)
    assert len(tasks) >= 8
    assert load_tasks(run_folder) == tasks
    for name in ("jsonl", "parquet", "hf", "chat", "alpaca", "sharegpt"):
        export_run(run_folder, tmp_path / name, name)
        assert load_tasks(tmp_path / name) == tasks, name
    assert load_tasks(tmp_path / "chat" / "train.jsonl") == tasks
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "Is it?", "output": "Yes"}\n{"text": "no task"}\n', "utf-8")
    with pytest.raises(BonitoError, match=r"Row 2 of .*bad.jsonl is not a task"):
        load_tasks(bad)


def test_no_tasks_is_one_clear_error_before_any_model_is_loaded(tmp_path):
    RunStore(tmp_path / "run.sqlite").close()  # a run that accepted nothing
    with pytest.raises(BonitoError, match="There are no tasks to fine-tune on in"):
        finetune(tmp_path, "no/such-model", tmp_path / "out")


def test_tasks_overlapping_the_labelled_data_are_left_out_unless_kept(run_folder, tmp_path):
    tasks = list_tasks(run_folder)
    first = tasks[0]["context"]
    some = EvaluationData([first], "labelled.jsonl")
    pairs, found = decontaminated_pairs(run_folder, some, keep=False)
    overlapping = [t for t in tasks if t["context"] == first]
    assert found.overlapping_tasks >= len(overlapping) > 0
    assert pairs == [(t["input"], t["output"]) for t in tasks if t not in overlapping]
    kept, found = decontaminated_pairs(run_folder, some, keep=True)
    assert kept == accepted(run_folder) and not found.left_out
    every = EvaluationData([t["context"] for t in tasks], "labelled.jsonl")
    with pytest.raises(
        BonitoError,
        match=r"No task is left to fine-tune on: .* keep_contaminated=True \(--keep-contam",
    ):
        decontaminated_pairs(run_folder, every, keep=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    RunStore(empty / "run.sqlite").close()
    with pytest.raises(BonitoError, match="There are no tasks to fine-tune on in"):
        decontaminated_pairs(empty, every, keep=False)


# --- what is trained on -----------------------------------------------------------------------


def test_pairs_are_the_target_prompt_then_the_output(run_folder, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tasks = load_tasks(run_folder)
    examples = target_examples(tasks, tokenizer, TARGET_RECIPE, "input-output")
    assert len(examples.items) == len(tasks)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for (instruction, output), item in zip(tasks, examples.items, strict=True):
        prompt = tokenizer(f"<|input|>\n{instruction}\n<|output|>\n", add_special_tokens=False)
        answer = tokenizer(output, add_special_tokens=False).input_ids
        assert item["input_ids"] == [bos, *prompt.input_ids, *answer, eos]
        assert item["labels"] == [IGNORE_INDEX] * (1 + len(prompt.input_ids)) + answer + [eos]

    with pytest.raises(BonitoError, match="no chat template"):
        target_examples(tasks, tokenizer, TARGET_RECIPE, "chat")
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    item = target_examples(tasks[:1], tokenizer, TARGET_RECIPE, "chat").items[0]
    prompt = tokenizer(f"<s>[user] {tasks[0][0]}\n[assistant] ", add_special_tokens=False)
    assert item["input_ids"][: len(prompt.input_ids)] == prompt.input_ids  # BOS once
    assert item["labels"][: len(prompt.input_ids)] == [IGNORE_INDEX] * len(prompt.input_ids)


def test_the_recipe_is_the_papers_with_one_epoch_up_to_10000_steps():
    recipe = TARGET_RECIPE
    assert (recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout) == (64, 16.0, 0.0)
    assert (recipe.learning_rate, recipe.max_grad_norm, recipe.batch_size) == (1e-4, 0.3, 16)
    assert recipe.quantize is None and recipe.optimizer is None  # Q-LoRA, paged AdamW on CUDA
    assert paper_steps(recipe, 40).max_steps == 3
    assert paper_steps(recipe, 16 * 20_000).max_steps == 10_000
    assert paper_steps(Recipe(max_steps=7), 1000).max_steps == 7


# --- fine-tuning ------------------------------------------------------------------------------


def finetune_args(tasks: Path, base: Path, output: Path, *extra: str) -> list[str]:
    return ["finetune", str(tasks), "--base-model", str(base), "-o", str(output), *SMALL, *extra]


def test_finetune_lowers_the_loss_resumes_and_refuses_other_settings(
    run_folder, tiny_model, tmp_path, monkeypatch
):
    output = tmp_path / "adapter"
    args = finetune_args(run_folder, tiny_model, output, "--learning-rate", "3e-3")
    result = runner.invoke(app, [*args, "--max-steps", "8", "--save-steps", "4"])
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "training_summary.json").read_text())
    losses = [loss for _, loss in summary["train_loss"]]
    assert summary["steps"] == 8 and losses[-1] < losses[0] / 2
    assert summary["pairs"]["train"] == len(accepted(run_folder))
    config = json.loads((output / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16.0)

    # killed after the checkpoint at step 4: the same command continues from it
    shutil.rmtree(output / "checkpoints" / "checkpoint-8")
    (output / "training_summary.json").unlink()
    result = runner.invoke(app, [*args, "--max-steps", "8", "--save-steps", "4"])
    assert result.exit_code == 0, result.output
    resumed = json.loads((output / "training_summary.json").read_text())
    assert resumed["resumed_from"] == "checkpoint-4" and resumed["steps"] == 8
    assert [step for step, _ in resumed["train_loss"]] == list(range(1, 9))

    # finished: the same command again returns at once, without loading the model
    monkeypatch.setattr(adaptation, "load_base", None)
    result = runner.invoke(app, [*args, "--max-steps", "8", "--save-steps", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads((output / "training_summary.json").read_text()) == resumed

    result = runner.invoke(app, [*args, "--max-steps", "9", "--save-steps", "4"])
    assert isinstance(result.exception, BonitoError)
    assert "recipe.max_steps: 8 -> 9" in str(result.exception)


def test_finetune_from_an_export_file_trains_on_the_same_pairs(run_folder, tiny_model, tmp_path):
    export_run(run_folder, tmp_path / "export", "chat")
    output = tmp_path / "adapter"
    summary = finetune(
        tmp_path / "export" / "train.jsonl",
        str(tiny_model),
        output,
        Recipe(lora_r=4, batch_size=4, micro_batch_size=4, max_steps=2, save_steps=0),
    )
    assert summary.steps == 2 and summary.pairs["train"] == len(accepted(run_folder))
    from bonito.train.trainer import fingerprint

    config = json.loads((output / "train_config.json").read_text())
    assert config["pairs"]["blake2b"] == fingerprint(accepted(run_folder))
    assert (output / "adapter_model.safetensors").is_file()


# --- continued pretraining --------------------------------------------------------------------


def test_continued_pretraining_trains_on_passage_chunks(tiny_model, tmp_path):
    passages = ROOT / "examples" / "passages.jsonl"
    texts = [json.loads(line)["text"] for line in passages.read_text("utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chunks, read = passage_chunks([str(passages)], str(tiny_model), 24, tmp_path / "skipped")
    assert read.documents == len(texts) and not read.skipped and len(chunks) > len(texts)
    assert all(len(tokenizer(c, add_special_tokens=False).input_ids) <= 24 for c in chunks)
    assert " ".join(chunks).split() == " ".join(texts).split()  # every word, in order, once

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    item = target_examples([("", chunks[0])], tokenizer, TARGET_RECIPE, None).items[0]
    ids = tokenizer(chunks[0], add_special_tokens=False).input_ids
    assert item == {"input_ids": [bos, *ids, eos], "labels": [IGNORE_INDEX, *ids, eos]}

    output = tmp_path / "tapt"
    recipe = Recipe(lora_r=4, batch_size=4, micro_batch_size=4, max_steps=2, save_steps=0)
    summary = continued_pretraining([str(passages)], str(tiny_model), output, recipe, max_tokens=24)
    assert summary.facts["passages"]["chunks"] == len(chunks) == summary.pairs["train"]
    config = json.loads((output / "train_config.json").read_text())
    assert config["prompt_format"] is None and config["pairs"]["count"] == len(chunks)
    assert summary.steps == 2


# --- the whole loop ---------------------------------------------------------------------------


LABELLED = {"pubmedqa": "pubmedqa_pqal.jsonl", "contractnli": "contractnli_test_sample.jsonl"}


def adapt_args(data: str, task: str, model: Path, output: Path) -> list[str]:
    """`bonito adapt` on the first 4 passages of a shared set and its first 3 labelled rows."""
    passages = output.parent / f"{data}-passages.jsonl"
    lines = (DATA / data / "passages.jsonl").read_text("utf-8").splitlines()[:4]
    passages.write_text("\n".join(lines) + "\n", "utf-8")
    labelled = DATA / data / LABELLED[data]
    return [
        "adapt", "--unlabelled", str(passages), "--labelled", str(labelled),
        "--data-format", data, "-t", task, "--base-model", str(model), "--generator", str(model),
        "-o", str(output), "--baseline", "tapt", "--device", "cpu",
        "--max-context-tokens", "128", "--min-context-tokens", "16", "--max-tasks", "40",
        "--templates", "1", "--limit", "3", "--max-steps", "2", "--save-steps", "0", *SMALL,
    ]  # fmt: skip


@needs_data
@pytest.mark.parametrize(("data", "task"), [("pubmedqa", "ynqa"), ("contractnli", "nli")])
def test_adapt_runs_the_loop_writes_the_table_and_reuses_finished_stages(
    data, task, tiny_model, tmp_path, monkeypatch
):
    output = tmp_path / "adapted"
    args = adapt_args(data, task, tiny_model, output)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = json.loads((output / "results.json").read_text())
    assert [row["label"] for row in table["rows"]] == ["zero-shot", "TAPT", "bonito"]
    assert table["metrics"] == ["accuracy", "macro_f1"] and table["examples"] == 3
    settings = table["settings"]
    assert settings["generator"] == settings["base_model"] == str(tiny_model)
    assert settings["task_type"] == task and settings["seeds"] == {"generation": 0, "training": 0}
    assert 0 < settings["generation"]["accepted"] <= 40
    tasks = list_tasks(output / "generate")
    found = settings["decontamination"]
    assert found["tasks"] == settings["generation"]["accepted"] == len(tasks)
    kept = found["tasks"] - found["overlapping_tasks"]
    assert settings["trainings"]["bonito"]["pairs"]["train"] == kept > 0
    for row in table["rows"]:
        evaluation = json.loads((output / row["evaluation"]).read_text())
        assert evaluation["average"] == row["scores"] and len(evaluation["ids"]) == 3
    bonito = json.loads((output / "evaluations" / "bonito.json").read_text())
    assert bonito["adapter"] == str(output / "finetune")
    markdown = (output / "results.md").read_text()
    assert "| model | accuracy | macro-F1 |" in markdown
    assert all(f"| {label} |" in markdown for label in ("zero-shot", "TAPT", "bonito"))
    assert f"Decontamination: {found['overlapping_passages']} of the " in markdown
    assert (output / "generate" / "run.sqlite").is_file()
    assert (output / "tapt" / "adapter_model.safetensors").is_file()
    if data != "pubmedqa":
        return
    # PubMedQA's passages are its labelled contexts: rows 1 to 3 are evaluated on, row 4 is not
    assert found["overlapping_tasks"] == sum(t["source"]["row"] <= 3 for t in tasks) > 0
    assert found["tapt_pieces"]["overlapping"] > 0
    assert "those tasks were left out" in markdown

    # everything done: no model is loaded again, and the table is the same
    for name in ("load_base", "evaluate_model", "load_engine"):
        monkeypatch.setattr(adaptation, name, None)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((output / "results.json").read_text()) == table

    # another training setting, and the contaminated tasks kept: both trainings and their
    # evaluations are made again
    monkeypatch.undo()
    longer = [*args[: args.index("--max-steps") + 1], "3", *args[args.index("--max-steps") + 2 :]]
    changed = runner.invoke(app, [*longer, "--keep-contaminated"])
    assert changed.exit_code == 0, changed.output
    settings = json.loads((output / "results.json").read_text())["settings"]
    trainings = settings["trainings"]
    assert trainings["bonito"]["steps"] == trainings["tapt"]["steps"] == 3
    assert trainings["bonito"]["pairs"]["train"] == len(tasks)
    assert not settings["decontamination"]["left_out"]
    assert (
        "those tasks were kept, as keep_contaminated (--keep-contaminated) asked"
        in (output / "results.md").read_text()
    )
    bonito = json.loads((output / "evaluations" / "bonito.json").read_text())
    assert bonito["settings"]["training"]["recipe"]["max_steps"] == 3


# --- mistakes and what a training leaves --------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-steps", "0"], "max_steps (--max-steps) must be at least 1, got 0"),
        (["--optimizer", "nonsense"], "Unknown optimizer 'nonsense'; use a transformers optimizer"),
    ],
)
def test_finetune_refuses_nonsense_training_values(
    run_folder, tiny_model, tmp_path, extra, message
):
    result = runner.invoke(app, finetune_args(run_folder, tiny_model, tmp_path / "ft", *extra))
    assert isinstance(result.exception, BonitoError)
    assert message in str(result.exception)
    assert not (tmp_path / "ft").exists()


def test_an_optimizer_that_cannot_run_here_is_one_sentence(run_folder, tiny_model, tmp_path):
    if importlib.util.find_spec("torch_xla"):
        pytest.skip("torch_xla is installed here: adamw_torch_xla can run")
    args = finetune_args(run_folder, tiny_model, tmp_path / "ft", "--optimizer", "adamw_torch_xla")
    result = runner.invoke(app, args)
    assert isinstance(result.exception, BonitoError)
    assert str(result.exception).startswith(
        "The optimizer adamw_torch_xla cannot run here (Trainer failed to import syncfree AdamW"
    )


def test_finetune_logs_the_last_step_and_writes_a_model_card(run_folder, tiny_model, tmp_path):
    output = tmp_path / "adapter"
    args = finetune_args(run_folder, tiny_model, output, "--max-steps", "3", "--save-steps", "0")
    result = runner.invoke(app, [*args, "--logging-steps", "10"])
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "training_summary.json").read_text())
    assert [step for step, _ in summary["train_loss"]] == [1, 3]
    last = summary["train_loss"][-1][1]
    assert f"-> {last:.4f}" in result.output

    card = (output / "README.md").read_text()
    assert "More Information Needed" not in card
    assert f'base_model: "{tiny_model}"' in card and "library_name: peft" in card
    assert f"{summary['pairs']['train']} tasks from `{run_folder}`" in card
    store = RunStore(run_folder / "run.sqlite", readonly=True)
    kinds = {t["task_type"] for t in store.tasks(("accepted",))}
    store.close()
    assert kinds and all(f"| {kind} | " in card for kind in kinds)
    assert f"bonito evaluate --model {tiny_model} --adapter {output} --data" in card
    assert f'AutoPeftModelForCausalLM.from_pretrained("{output}")' in card
    assert "| lora_r | 8 |" in card and "3 optimizer steps" in card


def test_adapt_refuses_a_bad_device_before_any_stage(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(adaptation, "generate_run", None)
    labelled = tmp_path / "labelled.jsonl"
    record = {"context": "Cats purr.", "question": "Do cats purr?", "choices": ["Yes", "No"]}
    labelled.write_text(json.dumps(record | {"label": 0}) + "\n")
    args = [
        "adapt", "--unlabelled", str(ROOT / "examples" / "passages.jsonl"),
        "--labelled", str(labelled), "-t", "ynqa", "--base-model", str(tiny_model),
        "--generator", str(tiny_model), "-o", str(tmp_path / "adapted"), "--device", "tpu",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert isinstance(result.exception, BonitoError)
    assert (
        str(result.exception)
        == "device (--device) tpu is not a device; use cpu, cuda, cuda:N or mps."
    )
