"""Sampling settings as a small value object, with the model card's defaults."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from numbers import Real
from typing import Any

from bonito.errors import BonitoError


def derive_seed(*parts: object) -> int:
    """A 63-bit seed made from `parts`, the same in every process and on every machine."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: n completions per prompt, nucleus sampling, a token limit and stop strings.

    temperature 0 means greedy decoding. Defaults are bonito-v1's model card. `extra` holds the
    settings of a vLLM SamplingParams beyond these (top_k, penalties, stop_token_ids, ...), by
    vLLM's names: the vllm engine and servers take them, the other engines refuse them
    (`bonito.engines.check_sampling`).
    """

    n: int = field(default=1, metadata={"help": "Samples per prompt."})
    temperature: float = field(default=0.5, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling's probability mass."})
    max_tokens: int = field(default=256, metadata={"help": "Longest completion, in tokens."})
    seed: int | None = field(
        default=None, metadata={"help": "Seed of the sampling (None: unseeded; 0 in a run)."}
    )
    stop: tuple[str, ...] = field(
        default=(), metadata={"help": "Strings at which a completion ends (not kept)."}
    )
    extra: dict[str, Any] = field(
        default_factory=dict,
        hash=False,
        metadata={"help": "vLLM's sampling settings beyond these, by vLLM's names."},
    )

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        if not isinstance(self.n, int) or self.n < 1:
            raise BonitoError(f"n must be a whole number of at least 1, got {self.n!r}.")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise BonitoError(
                f"max_tokens must be a whole number of at least 1, got {self.max_tokens!r}."
            )
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise BonitoError(f"{name} must be a finite number, got {value!r}.")
        if self.temperature < 0:
            raise BonitoError(f"temperature must be 0 (greedy) or more, got {self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise BonitoError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if any(not s for s in stop):
            raise BonitoError("stop strings must not be empty; remove the empty one.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (stop as a list; extra only when it holds something)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)} | {"stop": list(self.stop)}
        if not self.extra:
            del data["extra"]
        return data

    @classmethod
    def coerce(cls, value: Any = None) -> SamplingParams:
        """Accept our SamplingParams, a dict of its fields, None (defaults) or any object with the
        same attribute names, such as vLLM's SamplingParams."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        names = [f.name for f in fields(cls) if f.name != "extra"]
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise BonitoError(
                    f"Unknown sampling setting(s) {', '.join(unknown)}; "
                    f"the settings are {', '.join(names)}."
                )
            return cls(**value)
        if all(hasattr(value, name) for name in ("n", "temperature", "top_p", "max_tokens")):
            found = {name: getattr(value, name) for name in names if hasattr(value, name)}
            if found.get("max_tokens") is None:  # vLLM allows None: "up to the model's limit"
                found.pop("max_tokens")
            return cls(**found, extra=changed_settings(value, names))
        raise BonitoError(
            f"sampling_params must be bonito.SamplingParams, vllm.SamplingParams or a dict, "
            f"got {type(value).__name__}."
        )


def changed_settings(value: Any, known: list[str]) -> dict[str, Any]:
    """The settings of a sampling object (vLLM's SamplingParams, a msgspec struct) other than
    `known` that differ from a fresh object's; private ones and those derived from others
    (vLLM's output_text_buffer_length, from the stop strings) left out."""
    if is_dataclass(value):
        names = [f.name for f in fields(value)]
    else:
        names = list(getattr(type(value), "__struct_fields__", ()))
    fresh = type(value)()
    return {
        name: getattr(value, name)
        for name in names
        if name not in known
        and name not in DERIVED
        and not name.startswith("_")
        and getattr(value, name) != getattr(fresh, name, None)
    }


DERIVED = frozenset({"output_text_buffer_length"})
