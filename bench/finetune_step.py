"""Q-LoRA fine-tuning steps of a Mistral-7B-shaped model with random weights, through the trainer
`bonito finetune` uses: tokens/s and peak memory.

    python bench/finetune_step.py                            # CUDA, Mistral-7B's shape
    python bench/finetune_step.py --device cpu --scale tiny  # a scaled-down check on CPU

The model has transformers' `MistralConfig()` shape (Mistral-7B) and random weights, saved in
bf16 and loaded back by bonito's `load_base` (4-bit NF4 with double quantization when CUDA and
bitsandbytes are there), wrapped by `prepare` (LoRA r 64, alpha 16 on every linear layer) and
trained by `fine_tune` (paged AdamW on CUDA, plain AdamW without bitsandbytes; 16 sequences of
2,048 tokens a step, 4 per forward pass). A warm-up step comes first, then each optimizer step is
timed; peak memory is that of the timed steps on CUDA, the process's on CPU. Prints a table and
writes bench/results/finetune_step.json (finetune_step_tiny.json with --scale tiny).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import random
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
"""--scale tiny: Mistral's architecture at a size a CPU trains in seconds."""


def word_tokenizer(size: int):
    """A tokenizer of `size` made-up words with Mistral's special ids (<s> 1, </s> 2) and a pad
    token: `load_base` needs one; the steps read random ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3} | {f"w{i}": i for i in range(4, size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def save_random_model(folder: Path, config, device: str) -> int:
    """A random-weight model of `config` built on `device` (bf16 on CUDA) and saved with a
    tokenizer in `folder`; returns its parameter count."""
    import torch
    from transformers import MistralForCausalLM

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    word_tokenizer(config.vocab_size).save_pretrained(folder)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return parameters


def random_examples(count: int, length: int, vocab_size: int):
    """`count` sequences of `length` random ids, every token labelled."""
    from bonito.train.trainer import Examples

    rng = random.Random(0)
    items = []
    for _ in range(count):
        ids = [rng.randrange(4, vocab_size) for _ in range(length)]
        items.append({"input_ids": ids, "labels": list(ids)})
    return Examples(items)


def step_timer(cuda: bool):
    """A callback timing each optimizer step (end to end) and the peak memory after the first."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def _now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.mark = self._now()

        def on_step_end(self, args, state, control, **kwargs):
            now = self._now()
            self.seconds.append(now - self.mark)
            self.mark = now
            if cuda and state.global_step == 1:  # the warm-up is done: measure the steps alone
                torch.cuda.reset_peak_memory_stats()

    return StepTimer()


def train_steps(config, recipe, length: int, device: str) -> tuple[int, int, list[float]]:
    """Save a random model of `config`, load it and train it by the recipe on random sequences
    of `length` tokens; its parameters, trainable (LoRA) parameters and each step's seconds."""
    from bonito.train.trainer import fine_tune, load_base, prepare

    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "base"
        parameters = save_random_model(base, config, device)
        model, tokenizer = load_base(str(base), recipe)
        model = prepare(model, tokenizer, recipe)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        examples = random_examples(recipe.batch_size * recipe.max_steps, length, config.vocab_size)
        timer = step_timer(device == "cuda")
        output = Path(folder) / "out"
        fine_tune(
            model, tokenizer, examples, output, recipe, callbacks=[timer], description="bench"
        )
    return parameters, trainable, timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--scale", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--sequence-tokens", type=int, help="default: 2048 (7b), 128 (tiny)")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: training on CPU

    import peft
    import torch
    import transformers
    from transformers import MistralConfig

    from bonito.adapt.adaptation import TARGET_RECIPE
    from bonito.train.trainer import default_optimizer

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run with --device cpu --scale tiny.")
    tiny = args.scale == "tiny"
    config = MistralConfig(**TINY) if tiny else MistralConfig()
    length = args.sequence_tokens or (128 if tiny else 2048)
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    recipe = replace(
        TARGET_RECIPE,
        quantize=cuda and bnb,
        micro_batch_size=args.micro_batch_size,
        max_steps=1 + args.steps,
        save_steps=0,
        logging_steps=1,
    )
    parameters, trainable, seconds = train_steps(config, recipe, length, args.device)
    warmup, steps = seconds[0], seconds[1:]
    tokens = recipe.batch_size * length
    mean = sum(steps) / len(steps)
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated() / 2**30, "CUDA, allocated"
        device = torch.cuda.get_device_name()
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"
        device = platform.processor() or platform.machine()
    result = {
        "benchmark": "finetune_step",
        "device": device,
        "scale": "Mistral-7B shape (MistralConfig())" if not tiny else "tiny",
        "parameters": parameters,
        "trainable_parameters": trainable,
        "quantized": recipe.quantized(),
        "lora": {"r": recipe.lora_r, "alpha": recipe.lora_alpha, "dropout": recipe.lora_dropout},
        "optimizer": default_optimizer(),
        "batch_size": recipe.batch_size,
        "micro_batch_size": recipe.micro_batch_size,
        "sequence_tokens": length,
        "tokens_per_step": tokens,
        "warmup_seconds": round(warmup, 3),
        "step_seconds": [round(s, 3) for s in steps],
        "tokens_per_second": round(tokens / mean, 1),
        "peak_memory_gib": round(peak, 2),
        "peak_memory_kind": kind,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": importlib.import_module("bitsandbytes").__version__ if bnb else None,
    }
    header = ("scale", "quantized", "tokens/step", "s/step", "tokens/s", "peak GiB")
    row = (
        args.scale,
        result["quantized"],
        tokens,
        f"{mean:.2f}",
        f"{tokens / mean:,.0f}",
        f"{peak:.2f}",
    )
    for line in (header, row):
        print("".join(f"{cell!s:>12}" for cell in line))
    name = "finetune_step_tiny.json" if tiny else "finetune_step.json"
    output = args.output or ROOT / "bench" / "results" / name
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
