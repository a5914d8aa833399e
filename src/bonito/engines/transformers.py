"""In-process generation with transformers on CPU or CUDA: length-sorted batches, left padding,
batch sizes chosen from memory, n samples per prompt, stop strings, seeded sampling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psutil
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from bonito.engines.base import Completion, Progress
from bonito.engines.models import check_model_path, model_load_error
from bonito.errors import BonitoError
from bonito.sampling import SamplingParams

CPU_TOKEN_BUDGET = 32_768
"""On CPU, compute not memory is the limit: at most this many (prompt + new) tokens per batch."""

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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model: str, device: str, dtype: str | torch.dtype = "auto", **model_kwargs: Any):
    """Tokenizer and model through the normal from_pretrained path, set up for left padding."""
    check_model_path(model)
    if dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **model_kwargs)
    except (OSError, ValueError) as error:
        raise model_load_error(model, error) from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, lm.to(device).eval()


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of key/value cache one token takes across all layers."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize


class TransformersEngine:
    """A model loaded with transformers, generating in memory-sized, length-sorted batches."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | torch.dtype = "auto",
        batch_size: int | None = None,
        **model_kwargs: Any,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise BonitoError(f"batch_size must be at least 1, got {batch_size}.")
        unknown = sorted(set(model_kwargs) - LOAD_OPTIONS)
        if unknown:
            raise BonitoError(
                f"The transformers engine does not take {', '.join(unknown)} (vLLM options go "
                f"with engine='vllm'); it takes device, dtype, batch_size and "
                f"{', '.join(sorted(LOAD_OPTIONS))}."
            )
        self.model = model
        self.device = device or default_device()
        self.batch_size = batch_size
        self.tokenizer, self.lm = load_model(model, self.device, dtype, **model_kwargs)

    def encode(self, prompt: str) -> list[int]:
        """Token ids as vLLM sends them: the tokenizer's special tokens (BOS), never BOS twice."""
        ids = self.tokenizer(prompt).input_ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and ids[:2] == [bos, bos]:
            ids = ids[1:]
        return ids

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, progress: Progress | None = None
    ) -> list[list[Completion]]:
        encoded = [self.encode(p) for p in prompts]
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        results: list[list[Completion]] = [[] for _ in prompts]
        for batch in self.batches(encoded, sampling):
            for index, completions in zip(
                batch, self.generate_batch(encoded, batch, sampling), strict=True
            ):
                results[index] = completions
            if progress:
                progress(len(batch))
        return results

    def batches(self, encoded: list[list[int]], sampling: SamplingParams) -> list[list[int]]:
        """Prompt indices grouped longest first, each group as large as memory allows."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        budget = self.token_budget()
        groups: list[list[int]] = []
        for index in order:
            if groups and self.fits(groups[-1], encoded, sampling, budget):
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def fits(self, group: list[int], encoded, sampling: SamplingParams, budget: int) -> bool:
        if self.batch_size is not None:
            return len(group) < self.batch_size
        longest = len(encoded[group[0]])  # groups are filled longest first
        return (len(group) + 1) * sampling.n * (longest + sampling.max_tokens) <= budget

    def token_budget(self) -> int:
        """How many sequence tokens one batch may hold: free accelerator memory over the KV cache
        cost per token (with headroom for activations), or a fixed compute budget on CPU."""
        per_token = kv_bytes_per_token(self.lm.config, self.lm.dtype)
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            return max(1, int(free * 0.6) // (per_token * 2))
        memory = psutil.virtual_memory().available * 0.5 // (per_token * 2)
        return max(1, int(min(CPU_TOKEN_BUDGET, memory)))

    def generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        """Exactly the sampling asked for: no top-k or penalties from the model's own defaults."""
        sample = sampling.temperature > 0
        return GenerationConfig(
            max_new_tokens=sampling.max_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=0 if sample else None,
            num_return_sequences=sampling.n,
            stop_strings=list(sampling.stop) or None,
            eos_token_id=self.lm.generation_config.eos_token_id or self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )

    @torch.inference_mode()
    def generate_batch(
        self, encoded: list[list[int]], batch: list[int], sampling: SamplingParams
    ) -> list[list[Completion]]:
        width = max(len(encoded[i]) for i in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch])
        mask = torch.tensor(
            [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch]
        )
        output = self.lm.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=self.generation_config(sampling),
            tokenizer=self.tokenizer if sampling.stop else None,
        )
        new_tokens = output[:, width:].tolist()
        n = sampling.n
        return [
            [
                self.completion(new_tokens[row * n + k], len(encoded[index]), sampling)
                for k in range(n)
            ]
            for row, index in enumerate(batch)
        ]

    def completion(self, tokens: list[int], prompt_tokens: int, sampling: SamplingParams):
        """Text up to the end of sequence or first stop string (excluded, as vLLM does)."""
        eos = self.lm.generation_config.eos_token_id or self.tokenizer.eos_token_id
        eos_ids = set(eos) if isinstance(eos, list) else {eos}
        end = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
        if end is not None:
            tokens, finish = tokens[: end + 1], "stop"
        else:
            while tokens and tokens[-1] == self.tokenizer.pad_token_id:
                tokens = tokens[:-1]  # padding after a stop string ended this row early
            finish = "length" if len(tokens) >= sampling.max_tokens else "stop"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in sampling.stop if s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        return Completion(text, finish, prompt_tokens, len(tokens))
