"""A tiny bonito-format generator built offline in a few minutes on a CPU: a byte-level BPE
tokenizer and a small random Mistral model with a copy circuit set by hand (copy_circuit.py),
trained by `bonito train`'s own path (`train_generator`, every weight but the circuit's) on the
packaged, hand-written examples (data/tiny_examples.jsonl). It writes well-formed tasks, not good
ones: for smoke tests, demos and CI without downloads."""

from __future__ import annotations

import json
import random
import re
import string
import tempfile
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

from bonito.errors import BonitoError
from bonito.models import quiet_transformers
from bonito.prompt.format import CONTEXT, PIPE, PLACEHOLDER, TASK, TASKTYPE, build_prompt
from bonito.prompt.task_types import resolve_task_type
from bonito.train import copy_circuit
from bonito.train.ctga import TrainingPair
from bonito.train.generator import train_generator
from bonito.train.trainer import Recipe
from bonito.util.outputs import output_folder

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
MARKERS = (TASKTYPE, CONTEXT, TASK, PIPE, PLACEHOLDER)
_MARKER = "|".join(re.escape(m) for m in MARKERS)
PIECE = (
    rf" ?(?:{_MARKER})|'s|'t|'re|'ve|'m|'ll|'d| ?\p{{L}}+| ?\p{{N}}+"
    rf"| ?(?:(?!{_MARKER})[^\s\p{{L}}\p{{N}}])+|\s+(?!\S)|\s+"
)
"""GPT-2's pre-tokenization, but with each marker kept whole so that BPE can learn it as one
ordinary token (one decision to write `<|pipe|>`, not three)."""
VOCAB_SIZE = 2048
SEPARATORS = (" ", "\n", "\n\n")
ODD_CHARACTERS = "αβγδΔΨμ±°é创ü–—’“”"
SHORT_VARIANTS = 2
LONG_PROBABILITY = 0.4
INSTRUCTION_PROBABILITY = 0.3
JOINED = (1, 2, 4)
DISGUISE_RATES = (0.0, 0.2, 0.5, 0.9)
QUOTED_DISGUISE_RATES = (0.5, 0.9)
"""Where the answer is quoted from the passage: most words disguised, so it is copied, not
recalled."""
TARGET_KEPT = frozenset({"nli"})
"""Task types whose disguised variants disguise the passage only: a hypothesis written in made-up
words derails the label list after it."""
EPOCHS = 3.0
HEAD_SIZE = 32
"""vLLM's CPU attention takes head sizes of 32 and more."""
SHORT_VARIANTS_OF = {"ynqa": 4, "exqa": 4, "nli": 6}
"""More short variants for the task types that `make demo` and the smoke tests ask for."""
WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d[\d.,]*\d|\d")
OPENING_QUESTION = "{{context}}\n\nQ: What are the first words of the passage?\nA:"
"""The extractive question a two-layer model can learn to answer by copying: where to start is
always the same place."""
OPENING_WORDS = (2, 4)
OPENINGS_PER_PASSAGE = 2
SHUFFLED_OPENINGS = 64
"""Opening examples on a passage's words in random order, whose first words can only be copied,
never recalled: they teach the model to follow its copy circuit."""
ROPE_THETA = 1e6
"""Mistral 7B v0.2's; the copy circuit matches tokens on RoPE pairs that turn slowly enough."""


def load_examples() -> list[dict[str, str]]:
    """The packaged training examples: context, task_type (short form), input, output."""
    text = resources.files("bonito").joinpath("data/tiny_examples.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def opening_examples(examples: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """Extractive examples asking for a passage's first words (2 to 4 of them, without the
    punctuation after the last): `OPENINGS_PER_PASSAGE` per passage and `SHUFFLED_OPENINGS` on
    a passage's words shuffled (capitalised as a passage starts)."""
    passages = sorted({e["context"] for e in examples})
    contexts = [context for context in passages for _ in range(OPENINGS_PER_PASSAGE)]
    for _ in range(SHUFFLED_OPENINGS):
        words = rng.choice(passages).split(" ")
        rng.shuffle(words)
        shuffled = " ".join(words)
        contexts.append(shuffled[:1].upper() + shuffled[1:])
    return [
        {
            "context": context,
            "task_type": "exqa",
            "input": OPENING_QUESTION,
            "output": " ".join(context.split(" ")[: rng.randint(*OPENING_WORDS)]).rstrip(",.;:"),
        }
        for context in contexts
    ]


def target_text(example: dict[str, str]) -> str:
    """What the generator writes after the prompt (EOS is added by training)."""
    return f"{example['input']}\n{PIPE}\n{example['output']}"


def build_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE (no unknown characters) that prepends BOS like Mistral's tokenizer; the
    bonito markers stay ordinary text."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PIECE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    special = [UNK, BOS, EOS, PAD]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, special.index(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
    )


def made_up_word(word: str, rng: random.Random) -> str:
    """A stand-in the tokenizer has not learned for `word`: a number for a number, else letters,
    an acronym or odd symbols, capitalised like the original."""
    if word[0].isdigit():
        return str(rng.randint(0, 10 ** rng.randint(1, 4)))
    kind = rng.random()
    if kind < 0.1:
        return "".join(rng.choices(string.ascii_uppercase, k=rng.randint(2, 5)))
    if kind < 0.2:
        return "".join(rng.choices(ODD_CHARACTERS + string.ascii_letters, k=rng.randint(2, 6)))
    new = "".join(
        rng.choice("bcdfghklmnprstvwz") + rng.choice("aeiouy") for _ in range(rng.randint(1, 4))
    )
    return new.capitalize() if word[0].isupper() else new


def disguise(
    context: str, target: str, rng: random.Random, rate: float, keep: set[str]
) -> tuple[str, str]:
    """Swap about `rate` of the words outside `keep` for made-up ones, the same way in context
    and target, so the model learns to copy words it has never seen."""
    swaps: dict[str, str] = {}

    def swap(match: re.Match) -> str:
        word = match.group(0)
        if word not in keep and word not in swaps:
            swaps[word] = made_up_word(word, rng) if rng.random() < rate else word
        return swaps.get(word, word)

    return WORD.sub(swap, context), WORD.sub(swap, target)


def template_words(examples: list[dict[str, str]], min_passages: int = 4) -> set[str]:
    """Words of the instructions and answers used with several passages: the templates' words."""
    passages: dict[str, set[str]] = {}
    for example in examples:
        for word in WORD.findall(target_text(example)):
            passages.setdefault(word, set()).add(example["context"])
    return {word for word, seen in passages.items() if len(seen) >= min_passages}


def words_holding(context: str, answer: str) -> int:
    """How many of the passage's first words (split at spaces) hold the answer where the answer
    is quoted from it, as whole words (so a cut passage still holds it), else 1."""
    quoted = re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", context, re.IGNORECASE)
    return len(context[: quoted.end()].split(" ")) if quoted else 1


def training_pairs(examples: list[dict[str, str]], rng: random.Random) -> list[TrainingPair]:
    """Each example as written, plus variants with words disguised: `SHORT_VARIANTS` (or
    `SHORT_VARIANTS_OF` its type) on the passage cut after a random word, never before an answer
    quoted from it (short contexts teach the task type quickly; any last word teaches that only
    `<|task|>` starts the task) and, with probability `LONG_PROBABILITY`, one
    on the passage joined with others (real passages are long). Types in `TARGET_KEPT` keep their
    target as written."""
    passages = sorted({e["context"] for e in examples})
    keep = template_words(examples)
    instruction_lines = sorted(
        {line for e in examples for line in e["input"].splitlines() if PLACEHOLDER not in line}
        - {""}
    )
    pairs = []
    for example in examples:
        context, target = example["context"], target_text(example)
        variants = [(context, target)]
        words = context.split(" ")
        shortest = words_holding(context, example["output"])
        rates = QUOTED_DISGUISE_RATES if shortest > 1 else DISGUISE_RATES
        for _ in range(SHORT_VARIANTS_OF.get(example["task_type"], SHORT_VARIANTS)):
            short = " ".join(words[: rng.randint(shortest, len(words))])
            if rng.random() < INSTRUCTION_PROBABILITY:
                short += rng.choice(SEPARATORS) + rng.choice(instruction_lines)
            variants.append(disguise(short, target, rng, rng.choice(rates), keep))
        if rng.random() < LONG_PROBABILITY:
            parts = [context, *rng.sample(passages, rng.choice(JOINED))]
            rng.shuffle(parts)
            joined = rng.choice(SEPARATORS).join(parts)
            variants.append(disguise(joined, target, rng, rng.choice(rates), keep))
        if example["task_type"] in TARGET_KEPT:
            variants = [(disguised, target) for disguised, _ in variants]
        kind = resolve_task_type(example["task_type"])
        pairs += [TrainingPair(build_prompt(c, kind), t, kind.name) for c, t in variants]
    return pairs


def save_random_model(
    tokenizer: PreTrainedTokenizerFast,
    path: str | Path,
    *,
    hidden_size: int = 128,
    layers: int = 2,
    max_positions: int = 4096,
    copy_circuit_seed: int | None = None,
) -> Path:
    """Save a randomly initialised small Mistral for `tokenizer` (which is saved beside it), with
    the generation config pointing at its special tokens; the seed is the caller's. With
    `copy_circuit_seed`, the copy circuit is set into it (the default shape only)."""
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // HEAD_SIZE,
        num_key_value_heads=hidden_size // HEAD_SIZE // 2,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        sliding_window=None,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = MistralForCausalLM(config)
    if copy_circuit_seed is not None:
        copy_circuit.wire(model, tokenizer, copy_circuit_seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def build_tiny_model(
    path: str | Path, seed: int = 0, *, epochs: float = EPOCHS, overwrite: bool = False
) -> Path:
    """Build, train and save the tiny generator in `path`: about two minutes, on one CPU thread
    so that the same seed gives the same files whatever the core count, and a busy CPU does not
    stall it (fewer `epochs` build a quicker, worse one). It loads with AutoTokenizer and
    AutoModelForCausalLM and runs on any bonito engine. A folder that holds a model already is
    refused unless `overwrite`."""
    recipe = Recipe(
        lora_r=None,
        quantize=False,
        learning_rate=3e-3,
        batch_size=8,
        micro_batch_size=8,
        max_grad_norm=1.0,
        warmup_steps=20,
        epochs=epochs,
        save_steps=0,
        logging_steps=100,
        seed=seed,
    )
    path = output_folder(path, name="")
    if (path / "config.json").exists() and not overwrite:
        raise BonitoError(
            f"{path} already holds a model; use it as it is (`bonito generate --model {path}`) "
            "or pass overwrite=True (--overwrite) to build it again."
        )
    quiet_transformers()  # no "Writing model shards" bar on every save
    examples = load_examples()
    written = [(build_prompt(e["context"], e["task_type"]), target_text(e)) for e in examples]
    tokenizer = build_tokenizer([text for pair in written for text in pair])
    examples += opening_examples(examples, random.Random(seed + 1))
    pairs = training_pairs(examples, random.Random(seed))
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as base:
            torch.manual_seed(seed)
            save_random_model(tokenizer, base, copy_circuit_seed=seed)
            train_generator(
                pairs,
                base,
                path,
                recipe,
                held_out=0,
                overwrite=True,
                before_training=copy_circuit.keep_wired,
            )
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    return path
