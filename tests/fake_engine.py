"""A scripted engine for tests of what runs, exports and reports do with completions: it keeps the
engine protocol (bonito.engines.base) and answers from a script, with no model; and a model
folder holding only a tokenizer and a config, for the chunker and the checks of a path."""

import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

import bonito.engines
from bonito import SamplingParams
from bonito.engines.base import Completion, Failure, Finished, prompt_seeds
from bonito.prompt.format import PIPE, PLACEHOLDER
from bonito.prompt.task_types import resolve_task_type

Answer = str | Completion | Failure
Script = Callable[[str, int, int], Answer]
"""(prompt, seed, sample index) -> the completion's text (finishing with "stop"), a whole
Completion, or a Failure that ends the prompt."""
PROMPT = re.compile(r"<\|tasktype\|>\n(.*?)\n<\|context\|>\n(.*)\n<\|task\|>\n$", re.DOTALL)


def prompt_parts(prompt: str) -> tuple[str, str]:
    """The task type's short name and the passage of a bonito prompt."""
    name, passage = PROMPT.fullmatch(prompt).groups()
    return resolve_task_type(name).short, passage


def yes_no(prompt: str, seed: int, sample: int) -> str:
    """The same yes-no question on every passage: a task that passes every check."""
    return f"{PLACEHOLDER}\n\nIs this passage in English? Yes or no?\n{PIPE}\nyes"


def plausible(prompt: str, seed: int, sample: int) -> str:
    """What a generator might write, drawn by the seed: for ynqa, nli and exqa, most samples
    pass the checks, some fail them (an answer that is no label, or not in the passage) and
    some are no task at all (no pipe); any other type gets a question about the passage. On one
    passage in four, every type is asked the same (duplicates)."""
    kind, passage = prompt_parts(prompt)
    draw = random.Random(f"{seed} {sample}").random()
    if draw < 0.1:
        return f"{PLACEHOLDER}\nWhat is this about?"
    if random.Random(passage).random() < 0.25:
        return yes_no(prompt, seed, sample)
    words = passage.split()
    at = int(draw * 1000) % len(words)
    question, answer = {
        "ynqa": (f'Does the passage use the word "{words[at]}"? Yes or no?', "yes"),
        "nli": (f"Does it follow that {words[at]} matters? Yes, no, or maybe?", "maybe"),
        "exqa": (f"Which word comes {at + 1}th in the passage?", words[at]),
    }.get(kind, (f"What does the passage say about {words[at]}?", words[at]))
    if draw > 0.8:
        answer = "Saturn" if kind == "exqa" else "perhaps"
    return f"{PLACEHOLDER}\n\n{question}\n{PIPE}\n{answer}"


class ScriptedEngine:
    """An engine that answers every prompt from `script`, one prompt per group, in order; token
    counts are words."""

    name = "scripted"

    def __init__(self, model: str, script: Script = plausible) -> None:
        self.model, self.script = model, script

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Iterator[Finished]:
        seeds = prompt_seeds(sampling, len(prompts), seeds)
        for index, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            answers = [self.completion(prompt, seed, sample) for sample in range(sampling.n)]
            failure = next((a for a in answers if isinstance(a, Failure)), None)
            yield [(index, failure or answers)]

    def completion(self, prompt: str, seed: int, sample: int) -> Completion | Failure:
        answer = self.script(prompt, seed, sample)
        if isinstance(answer, str):
            return Completion(answer, "stop", len(prompt.split()), len(answer.split()))
        return answer


@contextmanager
def scripted_engines(script: Script = plausible) -> Iterator[list[ScriptedEngine]]:
    """While open, every engine the command line loads (through bonito.engines.load_engine) is
    a ScriptedEngine of `script`: yields the list of those loaded."""
    loaded: list[ScriptedEngine] = []

    def load_engine(model, engine="auto", **kwargs) -> ScriptedEngine:
        bonito.engines.choose_engine(engine, str(model), quiet=True)  # refuses unknown names
        loaded.append(ScriptedEngine(str(model), script))
        return loaded[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bonito.engines, "load_engine", load_engine)
        yield loaded


STALLING = """
import itertools, sys, time
sys.path.insert(0, sys.argv.pop(1))
stall = int(sys.argv.pop(1))
from fake_engine import plausible, scripted_engines
from bonito.cli import main

answered = itertools.count(1)
def stalling(prompt, seed, sample):
    while next(answered) > stall:
        time.sleep(3600)  # until killed
    return plausible(prompt, seed, sample)

sys.argv = ["bonito", *sys.argv[1:]]
with scripted_engines(stalling):
    main()
"""


def stalling_bonito(after: int) -> list[str]:
    """The command line as a process of its own whose engine answers `plausible` to `after`
    prompts and then stalls until the process is killed."""
    return [sys.executable, "-c", STALLING, str(Path(__file__).parent), str(after)]


def write_tokenizer_model(folder: Path) -> Path:
    """A model folder with no weights: the tiny generator's tokenizer, trained here as
    `build_tiny_model` trains it (in a second), and a Mistral config of its window, enough to
    chunk, check and name a model as the tiny generator would."""
    from transformers import MistralConfig

    from bonito.prompt.format import build_prompt
    from bonito.train.tiny_model import build_tokenizer, load_examples, target_text

    examples = load_examples()
    written = [(build_prompt(e["context"], e["task_type"]), target_text(e)) for e in examples]
    tokenizer = build_tokenizer([text for pair in written for text in pair])
    tokenizer.save_pretrained(folder)
    MistralConfig(vocab_size=len(tokenizer), max_position_embeddings=4096).save_pretrained(folder)
    return folder
