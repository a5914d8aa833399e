"""In-process generation with transformers on CPU or CUDA: n samples per prompt, stop strings,
seeded sampling, through one of two decoders.

- "dynamic" (the default on CPU): length-sorted, memory-sized, left-padded batches with a growing
  cache, each row dropped the step it ends.
- the slot decoders (the default on CUDA): a fixed number of sequences ("slots") over a cache
  allocated once; a slot whose sample ended takes the next prompt; each decode step has fixed
  shapes, so on CUDA it is captured once as a CUDA graph and replayed (no per-kernel launch cost),
  optionally compiled first with torch.compile; sampling stays on the device and the host looks
  at the tokens every few steps. "static" runs the same steps eagerly (CPU too), "graphs" replays
  them, "compiled" compiles them (and replays them on CUDA)."""

from bonito.engines.sampling import NUCLEUS_CANDIDATES, pick_tokens, race_noise
from bonito.engines.transformers.attention import GROUPED_SDPA, grouped_sdpa
from bonito.engines.transformers.core import PhaseTimes
from bonito.engines.transformers.engine import (
    DECODERS,
    TransformersEngine,
    choose_decoder,
    load_model,
    prepare_tokenizer,
)
from bonito.engines.transformers.slots import CapturedStep, Slots

__all__ = [
    "DECODERS",
    "GROUPED_SDPA",
    "NUCLEUS_CANDIDATES",
    "CapturedStep",
    "PhaseTimes",
    "Slots",
    "TransformersEngine",
    "choose_decoder",
    "grouped_sdpa",
    "load_model",
    "pick_tokens",
    "prepare_tokenizer",
    "race_noise",
]
