"""A thin adapter over vLLM's offline `LLM.generate`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from packaging.version import InvalidVersion, Version

from bonito.engines.base import Completion, Failure, Finished, engine_choice, prompt_seeds
from bonito.errors import BonitoError, first_line
from bonito.models import check_model_path, is_adapter, model_load_error
from bonito.prompt.sampling import SamplingParams

GROUP = 4096
"""Prompts per `LLM.generate` call: enough for vLLM to keep its batches full."""
OLDEST = (0, 19, 1)
"""The first vLLM that runs with transformers 5 (older ones read tokenizer attributes it
removed); keep it in step with the `vllm` extra in pyproject.toml."""
TRANSFORMERS_ONLY = ("batch_size", "device", "decoder")
"""Options of the transformers engine that `vllm.LLM` does not take."""
FAILED = ("error", "abort")
"""vLLM's finish reasons for a request it did not complete (retried when a run starts again)."""


def check_version(version: str) -> None:
    """BonitoError for a vLLM older than OLDEST (an unreadable version is let through)."""
    try:
        too_old = Version(version).release < OLDEST
    except InvalidVersion:
        return
    if too_old:
        raise BonitoError(
            f"vLLM {version} cannot run beside transformers 5, which bonito needs (vLLM "
            f"{'.'.join(map(str, OLDEST))} or later can): upgrade it with "
            "`pip install -U 'bonito[vllm]'`, or run `vllm serve` in your old environment and "
            f"use {engine_choice('openai')}."
        )


def check_vllm_sampling(sampling: SamplingParams) -> None:
    """BonitoError for sampling vLLM refuses, before any model loads."""
    if sampling.temperature > 2:
        raise BonitoError(
            f"vLLM takes a temperature up to 2, got {sampling.temperature}; lower it, or use "
            f"{engine_choice('transformers')}."
        )
    if sampling.temperature == 0 and sampling.n > 1:
        raise BonitoError(
            f"vLLM samples greedily (temperature 0) only once per prompt, and n is {sampling.n}; "
            "set n to 1, or raise the temperature."
        )


def vllm_sampling_kwargs(sampling: SamplingParams, seed: int | None) -> dict[str, Any]:
    """Our sampling as keyword arguments of `vllm.SamplingParams` (same meanings, same names),
    with the settings carried from a vLLM SamplingParams (`sampling.extra`) and the prompt's
    own seed."""
    return sampling.extra | {
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
        foreign = [key for key in TRANSFORMERS_ONLY if key in engine_kwargs]
        if foreign:
            raise BonitoError(
                f"{', '.join(foreign)} belong to the transformers engine, and vLLM does not "
                f"take them: leave them out, or use {engine_choice('transformers')}."
            )
        try:
            import vllm
        except ImportError as error:
            if isinstance(error, ModuleNotFoundError) and error.name == "vllm":
                raise BonitoError(
                    "The vllm engine needs vLLM, which is not installed: `pip install "
                    "'bonito[vllm]'` on Linux with an NVIDIA GPU, or use "
                    f"{engine_choice('transformers')}."
                ) from error
            raise BonitoError(
                f"vLLM is installed but fails to import ({type(error).__name__}: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no message'});"
                " reinstall it with `pip install -U 'bonito[vllm]'`, or use "
                f"{engine_choice('transformers')}."
            ) from error
        check_version(getattr(vllm, "__version__", ""))
        check_model_path(model)
        if is_adapter(model):
            raise BonitoError(
                f"'{model}' is a LoRA adapter and vLLM takes whole models: pass the merged copy "
                "(merged=True, `bonito train --merged`, writes OUTPUT/merged), or use "
                f"{engine_choice('transformers')}."
            )
        self.model = model
        from vllm.platforms import current_platform

        if current_platform.is_cpu():  # its sampler cannot rewind a seeded, partly read prompt
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        try:
            self.llm = vllm.LLM(model=model, **engine_kwargs)
        except (OSError, ValueError) as error:
            raise model_load_error(model, error) from error
        except RuntimeError as error:  # its engine core did not start: memory, most often
            raise BonitoError(
                f"vLLM could not start its engine for '{model}' ({first_line(error)}): if memory "
                "ran short, give it a share it can have (engine argument gpu_memory_utilization, "
                "or kv_cache_memory_bytes), or use the transformers engine."
            ) from error

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Iterator[Finished]:
        """vLLM schedules everything itself; the prompts go in groups of GROUP so that a run can
        save results as they come. Each prompt gets its own seed (vLLM's per-request seed)."""
        from vllm import SamplingParams as VLLMSamplingParams

        check_vllm_sampling(sampling)
        seeds = prompt_seeds(sampling, len(prompts), seeds)
        for start in range(0, len(prompts), GROUP):
            indices = range(start, min(start + GROUP, len(prompts)))
            params = [
                VLLMSamplingParams(**vllm_sampling_kwargs(sampling, seeds[i])) for i in indices
            ]
            results = self.llm.generate([prompts[i] for i in indices], params, use_tqdm=False)
            yield [(i, completions(result)) for i, result in zip(indices, results, strict=True)]


def completions(result: Any) -> list[Completion] | Failure:
    """Our completions from one vLLM RequestOutput, or a Failure where vLLM gave up on one."""
    for out in result.outputs:
        if out.finish_reason in FAILED:
            return Failure(f"vLLM ended a sample with finish reason '{out.finish_reason}'")
    return [
        Completion(
            text=out.text,
            finish_reason=out.finish_reason or "stop",
            prompt_tokens=len(result.prompt_token_ids or ()),
            completion_tokens=len(out.token_ids),
        )
        for out in result.outputs
    ]
