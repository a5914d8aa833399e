"""Fine-tuning with the loss on the target only: one trainer for generators (`bonito train`) and
for target models (`bonito finetune`). transformers' Trainer runs the loop (schedule, gradient
accumulation, checkpoints, resume), peft adds the LoRA adapters and bitsandbytes the 4-bit base
(Q-LoRA) on CUDA. Each example is BOS + source + target + EOS with labels only on target + EOS."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from bonito import __version__
from bonito.errors import BonitoError
from bonito.models import check_model_path, model_load_error, quiet_transformers
from bonito.train.recipe import Recipe
from bonito.util.outputs import output_folder, written_whole

# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` at every wrap; nothing
# the user can act on
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

IGNORE_INDEX = -100
CHECKPOINTS = "checkpoints"
CONFIG_FILE = "train_config.json"
CARD_FILE = "README.md"
SUMMARY_FILE = "training_summary.json"
EVALUATIONS_FILE = "evaluations.jsonl"
"""Where evaluation callbacks (the generator's held-out checks) append one line each."""
TOKENIZE_BATCH = 1024


def check_optimizer_runs(arguments: TrainingArguments, model: torch.nn.Module) -> None:
    """Refuse an optimizer that cannot run here (its package missing, its device absent)."""
    try:
        Trainer.get_optimizer_cls_and_kwargs(arguments, model)
    except (ImportError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise BonitoError(
            f"The optimizer {arguments.optim.value} cannot run here ({reason}); choose another "
            "optimizer (--optimizer; adamw_torch runs everywhere)."
        ) from error


@dataclass(frozen=True)
class TrainingSummary:
    """What a training did; training_summary.json holds `to_dict()`."""

    output: str
    pairs: dict[str, Any]
    """Pairs trained on (`train`; a generator's `held_out` and `task_types` too) and skipped."""
    train_tokens: int
    steps: int
    resumed_from: str | None
    seconds: float
    tokens_per_second: float | None
    train_loss: list[tuple[int, float]]
    eval_loss: list[tuple[int, float]]
    final_eval: dict[str, float]
    facts: dict[str, Any] = field(default_factory=dict)
    """Where the pairs came from: a target's `tasks` and `task_types`, or TAPT's `passages`."""
    generations: dict[str, Any] | None = None
    """A generator's held-out checks at the end (parse and placeholder rates)."""

    def to_dict(self) -> dict[str, Any]:
        """The summary as one flat JSON object (the facts among the counts)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "facts"}
        return {"output": self.output, **self.facts} | data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSummary:
        names = {f.name for f in fields(cls)}
        known = {key: value for key, value in data.items() if key in names}
        losses = {name: [tuple(point) for point in known[name]] for name in LOSSES}
        facts = {key: value for key, value in data.items() if key not in names}
        return cls(**known | losses, facts=facts)


LOSSES = ("train_loss", "eval_loss")


@dataclass
class Examples:
    """Tokenized pairs ready for the trainer, and the pairs skipped (by reason) on the way."""

    items: list[dict[str, list[int]]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def tokens(self) -> int:
        return sum(len(item["input_ids"]) for item in self.items)


def tokenize(
    pairs: Iterable[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, recipe: Recipe
) -> Examples:
    """Input ids and labels for each (source, target) pair: BOS + source (labels -100), then
    target + EOS (labelled); a source that starts with BOS (a chat template may write it) does
    not get a second one. Source and target are tokenized apart so the boundary is exact. A pair
    whose source (with BOS) or target (with EOS) is over the recipe's limits is skipped and
    counted as source_too_long or target_too_long; an empty target as empty_target."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    examples = Examples()
    pairs = iter(pairs)
    while batch := [pair for _, pair in zip(range(TOKENIZE_BATCH), pairs, strict=False)]:
        sources = tokenizer([s for s, _ in batch], add_special_tokens=False).input_ids
        targets = tokenizer([t for _, t in batch], add_special_tokens=False).input_ids
        for source_ids, target_ids in zip(sources, targets, strict=True):
            if source_ids[:1] != bos:  # a chat template may have written BOS already
                source_ids = bos + source_ids
            target_ids = target_ids + eos
            if len(target_ids) == 1:
                examples.skipped["empty_target"] += 1
            elif len(source_ids) > recipe.max_source_tokens:
                examples.skipped["source_too_long"] += 1
            elif len(target_ids) > recipe.max_target_tokens:
                examples.skipped["target_too_long"] += 1
            else:
                examples.items.append(
                    {
                        "input_ids": source_ids + target_ids,
                        "labels": [IGNORE_INDEX] * len(source_ids) + target_ids,
                    }
                )
    return examples


class Collator:
    """Right-pads a batch: padding gets attention 0 and label -100."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        ids, labels, mask = [], [], []
        for item in items:
            pad = width - len(item["input_ids"])
            ids.append(item["input_ids"] + [self.pad_token_id] * pad)
            labels.append(item["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(item["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels),
        }


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> None:
    """Give the tokenizer a `<pad>` token if it has none, growing the embeddings to match."""
    if tokenizer.pad_token_id is not None:
        return
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def load_base(base_model: str, recipe: Recipe) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The base model (4-bit NF4 with double quantization when the recipe quantizes; bf16 on
    CUDA, float32 on CPU otherwise) and its tokenizer, through the normal from_pretrained path."""
    check_model_path(base_model)
    quiet_transformers()
    options: dict[str, Any] = {"dtype": torch.float32}
    if torch.cuda.is_available():
        options = {"dtype": torch.bfloat16, "device_map": {"": torch.cuda.current_device()}}
    if recipe.quantized():
        options["quantization_config"] = _four_bit()
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_pretrained(base_model, **options)
    except OSError as error:
        raise model_load_error(base_model, error) from error
    return model, tokenizer


def _four_bit():
    if not torch.cuda.is_available():
        raise BonitoError(
            "4-bit Q-LoRA needs a CUDA GPU; on this machine train without quantize "
            "(--no-quantize), with plain LoRA."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise BonitoError(
            "4-bit Q-LoRA needs bitsandbytes: `pip install 'bonito[qlora]'`, or train without "
            "quantize (--no-quantize)."
        ) from error
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def prepare(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, recipe: Recipe
) -> torch.nn.Module:
    """Add a pad token if missing, then wrap the model in LoRA adapters on every linear layer
    but lm_head (after preparing a 4-bit base for training), unless the recipe trains every
    weight."""
    ensure_pad_token(tokenizer, model)
    if recipe.lora_r is None:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """A hash of the pairs, so a resumed training is known to read the same data."""
    digest = hashlib.blake2b(digest_size=16)
    for source, target in pairs:
        digest.update(source.encode() + b"\0" + target.encode() + b"\1")
    return digest.hexdigest()


def check_config(output: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Record the training's settings in the output folder; a folder holding a training with
    other settings is refused (listing the differences) unless `overwrite`, which starts over."""
    from bonito.runs.run import differences

    path = output_folder(output) / CONFIG_FILE
    saved = None if overwrite else read_json(path)
    if saved is not None:
        changed = differences(saved, as_json(config))
        if changed:
            raise BonitoError(
                f"{output} holds a training with other settings ({'; '.join(changed)}); "
                "use the same settings to resume it, another output (--output), or "
                "overwrite=True (--overwrite)."
            )
    if overwrite:
        for stale in (CHECKPOINTS, SUMMARY_FILE, EVALUATIONS_FILE):
            _remove(output / stale)
    write_json(path, config)


def as_json(value: Any) -> Any:
    """The value as it reads back from JSON (tuples as lists), to compare with a saved one."""
    return json.loads(json.dumps(value))


def read_json(path: Path) -> Any:
    """A JSON file's value, or None when it is missing or cut short."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Write a JSON file whole or not at all (a killed write leaves the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as file:
        file.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def default_optimizer() -> str:
    """Paged AdamW (bitsandbytes) on CUDA, as the recipe has it; plain AdamW where there is no
    CUDA device or no bitsandbytes."""
    import importlib.util

    paged = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    return "paged_adamw_32bit" if paged else "adamw_torch"


class Progress(TrainerCallback):
    """A progress bar (on a terminal) and one line per logging step with the loss, learning
    rate and tokens/s; the rates are kept for the summary."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.rates: list[float] = []
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from bonito.runs.run import bar

        self.bar = bar(total=state.max_steps, initial=state.global_step, desc=self.description)
        self.bar.unit = " steps"
        self.mark = (time.perf_counter(), state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)
        if state.global_step >= state.max_steps:
            control.should_log = True  # the summary's last loss is the last step's

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or self.bar is None:
            return
        now, seen = time.perf_counter(), state.num_input_tokens_seen
        rate = (seen - self.mark[1]) / max(now - self.mark[0], 1e-9)
        self.mark = (now, seen)
        self.rates.append(rate)
        logs["tokens_per_second"] = round(rate, 1)
        self.bar.write(
            f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
            f"lr {logs.get('learning_rate', 0):.2e}  {rate:,.0f} tokens/s"
        )

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint in `folder`: one holding trainer_state.json, which the
    Trainer writes last (a run killed while saving leaves a checkpoint without it)."""
    steps = [
        int(path.name.removeprefix("checkpoint-"))
        for path in folder.glob("checkpoint-*")
        if path.name.removeprefix("checkpoint-").isdigit()
        and (path / "trainer_state.json").is_file()
    ]
    return str(folder / f"checkpoint-{max(steps)}") if steps else None


def fine_tune(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Examples,
    output: Path,
    recipe: Recipe,
    *,
    held_out: Examples | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    description: str = "training",
) -> dict[str, Any]:
    """Train `model` (prepared by `prepare`) on the examples, evaluating the held-out ones every
    `eval_steps` (and at the start and end); checkpoints go to output/checkpoints, and a run with
    checkpoints there continues from the last one. Saves the result (the adapter, or the whole
    model) and the tokenizer in `output`; returns the loss history and rates."""
    if not train.items:
        raise BonitoError(
            "No training pairs are left after the length limits "
            f"(skipped: {dict(train.skipped)}); raise max_source_tokens (--max-source-tokens) "
            "or max_target_tokens (--max-target-tokens)."
        )
    cuda = torch.cuda.is_available()
    evaluate = bool(held_out and held_out.items)
    checkpoints = output / CHECKPOINTS
    arguments = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=recipe.micro_batch_size,
        per_device_eval_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.accumulation,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        optim=recipe.optimizer or default_optimizer(),
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        logging_steps=recipe.logging_steps,
        logging_first_step=True,  # a short training still shows where its loss started
        save_strategy="steps" if recipe.save_steps else "no",
        save_steps=recipe.save_steps or 500,
        save_total_limit=2,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=recipe.eval_steps,
        eval_on_start=evaluate,
        seed=recipe.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
    )
    check_optimizer_runs(arguments, model)
    progress = Progress(description)
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train.items,
        eval_dataset=held_out.items if held_out and evaluate else None,
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[progress, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    last = last_checkpoint(checkpoints)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - started
    evaluated = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    final = {}
    if evaluate and (not evaluated or evaluated[-1] != trainer.state.global_step):
        final = trainer.evaluate()
    trainer.save_model(str(output))
    tokenizer.save_pretrained(str(output))
    model.eval()
    history = trainer.state.log_history
    return {
        "steps": trainer.state.global_step,
        "resumed_from": Path(last).name if last else None,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(sum(progress.rates) / len(progress.rates), 1)
        if progress.rates
        else None,
        "train_loss": [(h["step"], h["loss"]) for h in history if "loss" in h],
        "eval_loss": [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h],
        "final_eval": {k: v for k, v in final.items() if isinstance(v, int | float)},
    }


def write_model_card(
    output: Path,
    base_model: str,
    recipe: Recipe,
    summary: dict[str, Any],
    *,
    about: str,
    data: Sequence[str],
    use: str,
) -> None:
    """Write the model card (README.md) of a training saved in `output`, in place of the empty
    template peft saves with an adapter: what the model is (`about`), how to use it (`use`, a
    shell command) and load it, the data it was trained on (`data`, Markdown lines), the recipe
    and the training's steps and loss."""
    adapter = recipe.lora_r is not None
    loader = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
    package = "peft" if adapter else "transformers"
    losses = summary["train_loss"]
    loss = f", train loss {losses[0][1]:.4f} -> {losses[-1][1]:.4f}" if losses else ""
    settings = asdict(recipe) | {
        "quantize": recipe.quantized(),
        "optimizer": recipe.optimizer or default_optimizer(),
    }
    lines = [
        "---",
        f"base_model: {json.dumps(base_model)}",
        f"library_name: {package}",
        "tags:",
        "- bonito",
        *(["- lora", "- peft"] if adapter else []),
        "---",
        "",
        f"# {output.name}",
        "",
        about,
        "",
        "## Use",
        "",
        "```bash",
        use,
        "```",
        "",
        "```python",
        f"from {package} import {loader}",
        "from transformers import AutoTokenizer",
        "",
        f'model = {loader}.from_pretrained("{output}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{output}")',
        "```",
        "",
        "## Training data",
        "",
        *data,
        "",
        "## Training",
        "",
        f"Base model `{base_model}`, "
        + (f"LoRA adapters (rank {recipe.lora_r})" if adapter else "every weight trained")
        + f"; {summary['steps']} optimizer step{'s' * (summary['steps'] != 1)}{loss}; "
        f"bonito {__version__}. The recipe:",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in settings.items()),
        "",
    ]
    (output / CARD_FILE).write_text("\n".join(lines), encoding="utf-8")


def merge(adapter: str | Path, output: str | Path) -> Path:
    """Fold a saved LoRA adapter into its base model (in bf16 on CUDA, float32 elsewhere) and
    save the whole model with the adapter's tokenizer in `output`, for engines that take only
    whole models (vLLM, llama.cpp after conversion)."""
    from bonito.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(adapter))
    output = Path(output)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output
