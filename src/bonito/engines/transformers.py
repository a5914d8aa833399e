"""In-process generation with transformers on CPU or CUDA: length-sorted batches, left padding,
batch sizes chosen from memory, n samples per prompt, stop strings, seeded sampling."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import psutil
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from bonito.engines.base import Completion, Finished, prompt_seeds
from bonito.engines.models import check_model_path, model_load_error
from bonito.errors import BonitoError
from bonito.sampling import SamplingParams, derive_seed

# transformers 5.23+ warns that `past_key_values` will be renamed `cache` (in 5.40), but in 5.23
# Mistral's forward does not take `cache` yet (it silently builds a new cache): keep the old name,
# without the warning on every step.
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)

CPU_TOKEN_BUDGET = 16_384
"""On CPU, compute not memory is the limit: at most this many (prompt + new) tokens per batch
(bench/batching.py on 2 cores: 16k beat 8k and 32k)."""

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
        eos = self.lm.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos) if isinstance(eos, list) else {eos}

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
        for batch in self.batches(encoded, sampling):
            completions = self.generate_batch(encoded, seeds, batch, sampling)
            yield list(zip(batch, completions, strict=True))

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

    @torch.inference_mode()
    def generate_batch(
        self, encoded: list[list[int]], seeds: list[int], batch: list[int], sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Decode one left-padded batch (n rows a prompt), dropping each row from the batch and
        its KV cache the step it ends, so finished samples cost nothing while others go on."""
        rows = [encoded[i] for i in batch for _ in range(sampling.n)]
        row_seeds = torch.tensor(
            [derive_seed(seeds[i], k) for i in batch for k in range(sampling.n)],
            device=self.device,
        )
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.lm.config)
        live = list(range(len(rows)))
        tokens: list[list[int]] = [[] for _ in rows]
        for step in range(sampling.max_tokens):
            logits = self.lm(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
            chosen = pick_tokens(logits[:, -1].float(), sampling, row_seeds, step)
            keep = []
            for slot, (row, token) in enumerate(zip(live, chosen.tolist(), strict=True)):
                tokens[row].append(token)
                if not self.ended(tokens[row], sampling):
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(live):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                chosen, mask, positions = chosen[index], mask[index], positions[index]
                row_seeds = row_seeds[index]
                live = [live[slot] for slot in keep]
            ids = chosen[:, None]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            positions = positions[:, -1:] + 1
        n = sampling.n
        return [
            [self.completion(tokens[row * n + k], len(encoded[i]), sampling) for k in range(n)]
            for row, i in enumerate(batch)
        ]

    def ended(self, tokens: list[int], sampling: SamplingParams) -> bool:
        """End of sequence, a stop string in the text so far, or max_tokens reached."""
        if tokens[-1] in self.eos_ids or len(tokens) >= sampling.max_tokens:
            return True
        return bool(sampling.stop) and any(
            stop in self.tokenizer.decode(tokens) for stop in sampling.stop
        )

    def completion(self, tokens: list[int], prompt_tokens: int, sampling: SamplingParams):
        """The text before end of sequence or the first stop string (excluded, as vLLM does)."""
        cut_short = len(tokens) >= sampling.max_tokens and tokens[-1] not in self.eos_ids
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in sampling.stop if s in text]
        if cuts:
            text, cut_short = text[: min(cuts)], False
        return Completion(text, "length" if cut_short else "stop", prompt_tokens, len(tokens))


NUCLEUS_CANDIDATES = 64
"""Top-p first looks among this many most likely tokens and sorts the whole vocabulary only for
rows whose nucleus reaches beyond them."""


def pick_tokens(
    logits: torch.Tensor, sampling: SamplingParams, seeds: torch.Tensor, step: int
) -> torch.Tensor:
    """The next token of each row: greedy at temperature 0, else sampled at the temperature from
    the smallest set of tokens whose probability reaches top_p (no top-k), as vLLM samples. A
    row's draw depends only on its logits, its seed and the step, never on the other rows."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = (logits / sampling.temperature).softmax(-1)
    if sampling.top_p >= 1:
        ranked, order = probs, torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    else:
        ranked, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]))
        if (ranked.sum(-1) < sampling.top_p).any():
            ranked, order = probs.sort(-1, descending=True)
        ranked[ranked.cumsum(-1) - ranked >= sampling.top_p] = 0
    choice = (ranked / race_noise(seeds, step, order)).argmax(-1)
    return order.gather(-1, choice[:, None]).squeeze(-1)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (
    _signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def race_noise(seeds: torch.Tensor, step: int, tokens: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise for each (row, token): sampling picks argmax of p / noise, which draws a
    token in proportion to p. The noise is a hash (SplitMix64, wrapping int64 arithmetic) of the
    row's seed, the step and the token id, so it needs no generator state and is the same
    whatever else is in the batch, like a counter-based generator."""
    x = seeds[:, None] + (step * (1 << 32) + tokens) * _GOLDEN
    x = (x ^ _shift(x, 30)) * _MIX1
    x = (x ^ _shift(x, 27)) * _MIX2
    x = x ^ _shift(x, 31)
    uniform = (_shift(x, 11).double() + 0.5) * 2.0**-53
    return -uniform.log()
