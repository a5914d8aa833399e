"""A thin adapter over vLLM's offline `LLM.generate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bonito.engines.base import Completion, Progress
from bonito.engines.models import check_model_path, model_load_error
from bonito.errors import BonitoError
from bonito.sampling import SamplingParams


def vllm_sampling_kwargs(sampling: SamplingParams) -> dict[str, Any]:
    """Our sampling as keyword arguments of `vllm.SamplingParams` (same meanings, same names)."""
    return {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
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
        self.model = model
        try:
            self.llm = vllm.LLM(model=model, **engine_kwargs)
        except (OSError, ValueError) as error:
            raise model_load_error(model, error) from error

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, progress: Progress | None = None
    ) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        params = VLLMSamplingParams(**vllm_sampling_kwargs(sampling))
        results = self.llm.generate(list(prompts), params, use_tqdm=False)
        if progress:
            progress(len(prompts))
        return [
            [
                Completion(
                    text=out.text,
                    finish_reason=out.finish_reason or "stop",
                    prompt_tokens=len(result.prompt_token_ids or ()),
                    completion_tokens=len(out.token_ids),
                )
                for out in result.outputs
            ]
            for result in results
        ]
