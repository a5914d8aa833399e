"""How inputs are read and cut into contexts: the settings, their defaults and help, in one place
(the command line takes its options' defaults and help from here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bonito.errors import BonitoError

MAX_INPUT_TOKENS = 2048
"""The longest prompt bonito-v1 saw in training."""


@dataclass(frozen=True)
class Reading:
    """Which documents, and which of their contexts, a reading takes."""

    text_field: str = field(default="text", metadata={"help": "Field or column holding the text."})
    split: str = field(default="train", metadata={"help": "Split of a dataset input."})
    include: tuple[str, ...] = field(
        default=(), metadata={"help": "In folders, read only files matching these globs."}
    )
    exclude: tuple[str, ...] = field(
        default=(), metadata={"help": "In folders, leave out files matching these globs."}
    )
    limit: int | None = field(default=None, metadata={"help": "Read at most this many contexts."})
    """None: all."""
    per_document: int | None = field(
        default=None,
        metadata={
            "help": "Read at most the first K contexts of each document (with a limit: a sample "
            "of many documents, not all of the first)."
        },
    )
    """None: all."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(self.include or ()))
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))
        for name in ("limit", "per_document"):
            value = getattr(self, name)
            if value is not None and value < 1:
                flag = "--" + name.replace("_", "-")
                raise BonitoError(f"{name} ({flag}) must be at least 1, got {value}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (the globs as lists)."""
        return asdict(self) | {"include": list(self.include), "exclude": list(self.exclude)}


@dataclass(frozen=True)
class Chunking:
    """How long contexts are, in the generator's tokens."""

    max_tokens: int = field(default=512, metadata={"help": "Longest context, in tokens."})
    min_tokens: int = field(
        default=32, metadata={"help": "Shortest context, unless a whole document."}
    )
    overlap: int = field(
        default=0, metadata={"help": "Tokens a context repeats from the one before."}
    )
    max_input_tokens: int = field(
        default=MAX_INPUT_TOKENS,
        metadata={"help": "Longest prompt the model takes, in tokens."},
    )

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise BonitoError(
                f"max_tokens (--max-context-tokens) must be at least 1, got {self.max_tokens}."
            )
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise BonitoError(
                "min_tokens (--min-context-tokens) must be between 1 and max_tokens "
                f"({self.max_tokens}), got {self.min_tokens}."
            )
        if not 0 <= self.overlap <= self.max_tokens // 2:
            raise BonitoError(
                "overlap (--overlap) must be between 0 and half of max_tokens "
                f"({self.max_tokens // 2}), got {self.overlap}."
            )
