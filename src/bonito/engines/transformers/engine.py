"""The transformers engine: loading, options, the choice of decoder and its fall-back."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from bonito.engines.base import Finished, prompt_seeds
from bonito.engines.transformers.attention import GROUPED_SDPA, register_grouped_sdpa
from bonito.engines.transformers.dynamic import DynamicDecoding
from bonito.engines.transformers.slots import SlotDecoding
from bonito.errors import BonitoError
from bonito.models import (
    cache_keyword,
    check_dtype,
    config_window,
    load_causal_lm,
    resolve_device,
)
from bonito.prompt.sampling import SamplingParams

log = logging.getLogger("bonito")

DECODERS = ("auto", "dynamic", "static", "graphs", "compiled")
SLOT_MODEL_TYPES = frozenset({"llama", "mistral"})
"""Architectures whose attention layers call the cache and the attention function the way the
slot decoders rely on."""

LOAD_OPTIONS = frozenset(
    {
        "revision",
        "trust_remote_code",
        "attn_implementation",
        "device_map",
        "token",
        "cache_dir",
        "low_cpu_mem_usage",
        "quantization_config",
        "local_files_only",
    }
)
"""from_pretrained options the engine passes on; anything else (a vLLM option, a typo) is refused
rather than silently stored on the model config."""


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding, and a pad token (end of sequence when the tokenizer has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model: str,
    device: str | None,
    dtype: str | torch.dtype = "auto",
    adapter: str | None = None,
    **model_kwargs: Any,
):
    """Tokenizer and model through the normal from_pretrained path (an adapter merged in, see
    `load_causal_lm`), in eval mode on `device` (see `resolve_device`), set up for left
    padding."""
    device = resolve_device(device)
    check_dtype(dtype)
    if dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    lm, tokenizer = load_causal_lm(model, adapter, dtype=dtype, **model_kwargs)
    return prepare_tokenizer(tokenizer), lm.to(device).eval()


def check_options(batch_size: int | None, decoder: str) -> None:
    """Refuse a batch size below 1 or an unknown decoder, before anything is loaded."""
    if batch_size is not None and batch_size < 1:
        raise BonitoError(f"batch_size must be at least 1, got {batch_size}.")
    if decoder not in DECODERS:
        raise BonitoError(f"Unknown decoder '{decoder}'; choose one of {', '.join(DECODERS)}.")


def choose_decoder(decoder: str, device: str, config: Any) -> str:
    """Resolve "auto" (graphs on CUDA for the unquantized architectures the slot decoders
    know, else dynamic) and refuse a decoder the device or the model cannot run."""
    quantized = getattr(config, "quantization_config", None) is not None
    supported = config.model_type in SLOT_MODEL_TYPES and not quantized
    cuda = device.startswith("cuda")
    if decoder == "auto":
        return "graphs" if cuda and supported else "dynamic"
    if decoder != "dynamic" and not supported:
        kind = f"quantized {config.model_type}" if quantized else config.model_type
        raise BonitoError(
            f"decoder='{decoder}' runs unquantized Llama and Mistral models, not {kind}; use "
            "decoder='dynamic'."
        )
    if decoder == "graphs" and not cuda:
        raise BonitoError("decoder='graphs' needs a CUDA device; use decoder='static' on CPU.")
    return decoder


class TransformersEngine(DynamicDecoding, SlotDecoding):
    """A model loaded with transformers, generating with the decoder chosen at construction:
    "auto" (graphs on CUDA, dynamic on CPU), "dynamic", "static", "graphs" or "compiled" (see the
    module's docstring). `batch_size` caps the prompts decoded at once (each with its n samples);
    by default memory decides."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | torch.dtype = "auto",
        batch_size: int | None = None,
        decoder: str = "auto",
        **model_kwargs: Any,
    ) -> None:
        check_options(batch_size, decoder)
        unknown = sorted(set(model_kwargs) - LOAD_OPTIONS)
        if unknown:
            raise BonitoError(
                f"The transformers engine does not take {', '.join(unknown)} (vLLM options go "
                f"with engine='vllm'); it takes device, dtype, batch_size, decoder and "
                f"{', '.join(sorted(LOAD_OPTIONS))}."
            )
        tokenizer, lm = load_model(model, device, dtype, **model_kwargs)
        self._setup(model, tokenizer, lm, batch_size, decoder)

    @classmethod
    def from_model(
        cls,
        lm: Any,
        tokenizer: Any,
        *,
        name: str = "in-memory",
        batch_size: int | None = None,
        decoder: str = "auto",
    ) -> TransformersEngine:
        """An engine over a model already loaded (on its device), such as one just trained."""
        check_options(batch_size, decoder)
        engine = cls.__new__(cls)
        engine._setup(name, prepare_tokenizer(tokenizer), lm.eval(), batch_size, decoder)
        return engine

    def _setup(self, model: str, tokenizer: Any, lm: Any, batch_size: int | None, decoder: str):
        self.model = model
        self.tokenizer, self.lm = tokenizer, lm
        self.device = str(lm.device)
        self.batch_size = batch_size
        self.decoder = choose_decoder(decoder, self.device, lm.config)
        self.automatic = decoder == "auto"
        self.attention = lm.config._attn_implementation  # the one to go back to
        if self.attention == GROUPED_SDPA:  # the model served a slot decoder before
            self.attention = "sdpa"
        if self.decoder != "dynamic":
            register_grouped_sdpa()
            lm.set_attn_implementation(GROUPED_SDPA)
        eos = lm.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos) if isinstance(eos, list) else {eos}
        self.cache_keyword = cache_keyword(lm)
        self.phases = None
        self.slots = None

    def fall_back(self, failure: str) -> None:
        """Leave the slot decoder chosen by "auto" for the dynamic one, for good, after it failed
        before producing anything (the samples are the same either way, only slower)."""
        log.warning(
            "The %s decoder failed (%s); its memory freed, generating with the dynamic decoder "
            "instead.",
            self.decoder,
            failure,
        )
        self.decoder = "dynamic"
        self.drop_slots()
        self.lm.set_attn_implementation(self.attention)

    def encode(self, prompt: str) -> list[int]:
        """Token ids as vLLM sends them: the tokenizer's special tokens (BOS), never BOS twice."""
        ids = self.tokenizer(prompt).input_ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and ids[:2] == [bos, bos]:
            ids = ids[1:]
        return ids

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Iterator[Finished]:
        encoded = [self.encode(p) for p in prompts]
        seeds = prompt_seeds(sampling, len(prompts), seeds)
        self.check_window(encoded, sampling)
        if self.decoder != "dynamic":
            started, failure = False, None
            try:
                for finished in self.generate_in_slots(encoded, seeds, sampling):
                    started = True
                    yield finished
                return
            except Exception as error:
                if started or not self.automatic:
                    raise
                first = str(error).strip().splitlines()[:1]
                failure = ": ".join([type(error).__name__, *first])
            # out of the except block, so that the error's frames no longer hold the slots
            self.fall_back(failure)
        for batch in self.batches(encoded, sampling):
            completions = self.generate_batch(encoded, seeds, batch, sampling)
            yield list(zip(batch, completions, strict=True))

    def check_window(self, encoded: list[list[int]], sampling: SamplingParams) -> None:
        """BonitoError if the longest prompt and max_tokens go past the model's window."""
        window = config_window(self.lm.config)
        longest = max(map(len, encoded), default=0)
        if window is not None and longest + sampling.max_tokens > window:
            raise BonitoError(
                f"A prompt of {longest} tokens and max_tokens {sampling.max_tokens} do not fit "
                f"the model's window of {window} tokens; shorten the passage or lower max_tokens."
            )
