"""A thin adapter over vLLM's offline `LLM.generate`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from bonito.engines.base import Completion, Finished, prompt_seeds
from bonito.engines.models import check_model_path, is_adapter, model_load_error
from bonito.errors import BonitoError
from bonito.sampling import SamplingParams

GROUP = 4096
"""Prompts per `LLM.generate` call: enough for vLLM to keep its batches full."""


def vllm_sampling_kwargs(sampling: SamplingParams, seed: int | None) -> dict[str, Any]:
    """Our sampling as keyword arguments of `vllm.SamplingParams` (same meanings, same names),
    with the prompt's own seed."""
    return {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": seed,
        "stop": list(sampling.stop) or None,
    }


class VLLMEngine:
    """vLLM in-process; engine_kwargs (tensor_parallel_size, gpu_memory_utilization,
    enforce_eager, quantization, ...) go to `vllm.LLM` unchanged."""

    name = "vllm"

    def __init__(self, model: str, **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as error:
            raise BonitoError(
                "The vllm engine needs vLLM, which is not installed: `pip install 'bonito[vllm]'` "
                "on Linux with an NVIDIA GPU, or use --engine transformers."
            ) from error
        check_model_path(model)
        if is_adapter(model):
            raise BonitoError(
                f"'{model}' is a LoRA adapter and vLLM takes whole models: pass the merged copy "
                "(`bonito train --merged` writes OUTPUT/merged), or use --engine transformers."
            )
        self.model = model
        from vllm.platforms import current_platform

        if current_platform.is_cpu():  # its sampler cannot rewind a seeded, partly read prompt
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        try:
            self.llm = vllm.LLM(model=model, **engine_kwargs)
        except (OSError, ValueError) as error:
            raise model_load_error(model, error) from error

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Iterator[Finished]:
        """vLLM schedules everything itself; the prompts go in groups of GROUP so that a run can
        save results as they come. Each prompt gets its own seed (vLLM's per-request seed)."""
        from vllm import SamplingParams as VLLMSamplingParams

        seeds = prompt_seeds(sampling, len(prompts), seeds)
        for start in range(0, len(prompts), GROUP):
            indices = range(start, min(start + GROUP, len(prompts)))
            params = [
                VLLMSamplingParams(**vllm_sampling_kwargs(sampling, seeds[i])) for i in indices
            ]
            results = self.llm.generate([prompts[i] for i in indices], params, use_tqdm=False)
            yield [(i, completions(result)) for i, result in zip(indices, results, strict=True)]


def completions(result: Any) -> list[Completion]:
    """Our completions from one vLLM RequestOutput."""
    return [
        Completion(
            text=out.text,
            finish_reason=out.finish_reason or "stop",
            prompt_tokens=len(result.prompt_token_ids or ()),
            completion_tokens=len(out.token_ids),
        )
        for out in result.outputs
    ]
