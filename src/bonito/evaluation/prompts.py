"""How a target model is prompted, in training and in evaluation alike: the paper's
`<|input|>`/`<|output|>` format for base models, or the model's own chat template."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from bonito.errors import BonitoError
from bonito.prompt.format import INPUT_OUTPUT

PROMPT_FORMATS = ("input-output", "chat")


def check_prompt_format(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise BonitoError(
            f"Unknown prompt format '{prompt_format}'; use {' or '.join(PROMPT_FORMATS)}."
        )


def target_prompt(
    instruction: str, tokenizer: PreTrainedTokenizerBase, prompt_format: str = "input-output"
) -> str:
    """The text the target model reads before its answer: `"<|input|>\\n" + instruction +
    "\\n<|output|>\\n"`, or, for "chat", the instruction as the user's message in the tokenizer's
    chat template, ending with the assistant's turn opened."""
    check_prompt_format(prompt_format)
    if prompt_format == "input-output":
        return INPUT_OUTPUT.format(instruction=instruction)
    if not tokenizer.chat_template:
        raise BonitoError(
            "The model's tokenizer has no chat template; use the prompt format input-output."
        )
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of a prompt as training sees them (`bonito.train.trainer.tokenize`): BOS,
    when the tokenizer has one, then the prompt tokenized without special tokens; BOS never
    twice (a chat template may write it)."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    bos = tokenizer.bos_token_id
    return ids if bos is None or ids[:1] == [bos] else [bos, *ids]


def answer_ids(answer: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of an answer that follows a prompt: tokenized on its own, as training tokenizes
    targets, so that every prompt is followed by the same tokens for the same answer."""
    return tokenizer(answer, add_special_tokens=False).input_ids
