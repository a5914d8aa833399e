"""How to fine-tune: the recipe of generators (bonito-v1's) and of target models (the paper's),
each setting with its default and help in one place (the command line takes them from here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bonito.errors import BonitoError


@dataclass(frozen=True)
class Recipe:
    """How to fine-tune. The defaults are bonito-v1's (its model card): LoRA r 64, alpha 4,
    dropout 0 on every linear layer but lm_head; a 4-bit NF4 base with double quantization and
    paged AdamW where CUDA is present (for adapters: a full fine-tuning loads the base whole);
    lr 1e-4 falling linearly to 0; weight decay 0; gradient norm clipped at 0.3; 16 pairs per
    optimizer step; sources and targets up to 2,048 tokens (longer pairs are skipped and
    counted, never cut)."""

    lora_r: int | None = field(default=64, metadata={"help": "LoRA rank."})
    """LoRA rank; None trains every weight (full fine-tuning)."""
    lora_alpha: float = field(default=4.0, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    quantize: bool | None = field(default=None, metadata={"help": "4-bit NF4 base (Q-LoRA)."})
    """None: where CUDA is present, for LoRA only (a quantized base cannot be trained whole)."""
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=0.3, metadata={"help": "Gradient norm clipping."})
    warmup_steps: int = field(default=0, metadata={"help": "Steps of linear warm-up."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per optimizer step."})
    micro_batch_size: int = field(
        default=4,
        metadata={"help": "Pairs per forward pass (gradient accumulation makes the rest)."},
    )
    epochs: float = field(default=1.0, metadata={"help": "Passes over the pairs."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps, instead of epochs."}
    )
    """None: `epochs` passes over the pairs."""
    max_source_tokens: int = field(
        default=2048, metadata={"help": "Longer sources are skipped and counted."}
    )
    max_target_tokens: int = field(
        default=2048, metadata={"help": "Longer targets are skipped and counted."}
    )
    optimizer: str | None = field(default=None, metadata={"help": "A transformers optimizer name."})
    """None: paged_adamw_32bit on CUDA with bitsandbytes, else adamw_torch (`default_optimizer`)."""
    save_steps: int = field(
        default=500, metadata={"help": "Steps between checkpoints (0: none, so no resume)."}
    )
    eval_steps: int = field(default=500, metadata={"help": "Steps between evaluations."})
    logging_steps: int = field(default=10, metadata={"help": "Steps between loss lines."})
    seed: int = field(default=0, metadata={"help": "Seed of the order and initialisation."})

    def __post_init__(self) -> None:
        positive = ("batch_size", "micro_batch_size", "max_source_tokens", "max_target_tokens")
        for name in positive + ("eval_steps", "logging_steps", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BonitoError(
                    f"The training option {name} (--{name.replace('_', '-')}) must be at least "
                    f"1, got {value}."
                )
        if not 0 <= self.seed < 2**32:
            raise BonitoError(
                f"The training option seed (--seed) must be between 0 and {2**32 - 1} (the "
                f"range NumPy's seeding takes), got {self.seed}."
            )
        if self.batch_size % self.micro_batch_size:
            raise BonitoError(
                f"batch_size (--batch-size) {self.batch_size} is not a multiple of "
                f"micro_batch_size (--micro-batch-size) {self.micro_batch_size}; choose sizes "
                "that divide evenly (e.g. 16 and 4)."
            )
        if self.lora_r is not None and self.lora_r < 1:
            raise BonitoError(
                "lora_r (--lora-r), the LoRA rank, must be at least 1, or None (--full) for a "
                "full fine-tuning."
            )
        if self.quantize and self.lora_r is None:
            raise BonitoError(
                "A full fine-tuning, lora_r None (--full), trains every weight, which a 4-bit "
                "base cannot: drop quantize (--quantize), or train LoRA adapters."
            )
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise BonitoError(
                "learning_rate (--learning-rate) and epochs (--epochs) must be positive."
            )
        if self.optimizer is not None:
            check_optimizer(self.optimizer)

    @property
    def accumulation(self) -> int:
        return self.batch_size // self.micro_batch_size

    def quantized(self) -> bool:
        if self.quantize is None:
            import torch

            return self.lora_r is not None and torch.cuda.is_available()
        return self.quantize


GENERATOR_RECIPE = Recipe()
"""bonito-v1's recipe, for training generators."""

TARGET_RECIPE = Recipe(lora_alpha=16.0)
"""The paper's recipe for target models: bonito-v1's (Q-LoRA on CUDA, LoRA r 64, lr 1e-4 linear,
paged AdamW, gradient norm 0.3, 16 pairs a step) with LoRA alpha 16."""


def check_optimizer(name: str) -> None:
    """Refuse a name that is not one of transformers' optimizers."""
    from transformers.training_args import OptimizerNames

    if name not in {option.value for option in OptimizerNames}:
        raise BonitoError(
            f"Unknown optimizer '{name}'; use a transformers optimizer name such as adamw_torch, "
            "adamw_8bit, paged_adamw_32bit, adafactor or sgd (transformers' OptimizerNames lists "
            "them all)."
        )
