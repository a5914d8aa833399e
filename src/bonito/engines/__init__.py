"""Engines: one small protocol, one module per backend, optional backends imported lazily."""

from __future__ import annotations

import importlib.util
import json
import logging
from typing import Any

from bonito.engines.base import Completion, Engine, Failure, Finished, generate_all
from bonito.errors import BonitoError
from bonito.prompt.sampling import SamplingParams

ENGINES = ("auto", "transformers", "vllm", "openai", "llamacpp")
log = logging.getLogger("bonito")


def choose_engine(engine: str, model: str = "", quiet: bool = False) -> str:
    """Resolve "auto": vLLM when importable and a CUDA device is present and the model is not a
    LoRA adapter folder, else transformers ("openai", a server, and "llamacpp", a .gguf file,
    are only ever chosen by name); logged unless `quiet`."""
    if engine not in ENGINES:
        raise BonitoError(f"Unknown engine '{engine}'; choose one of {', '.join(ENGINES)}.")
    if engine != "auto":
        return engine
    import torch

    from bonito.models import is_adapter

    has_vllm = importlib.util.find_spec("vllm") is not None
    adapter = bool(model) and is_adapter(model)
    chosen = "vllm" if has_vllm and torch.cuda.is_available() and not adapter else "transformers"
    why = (
        "vLLM and a CUDA device found"
        if chosen == "vllm"
        else "a LoRA adapter"
        if adapter and has_vllm
        else ("no CUDA device" if has_vllm else "vLLM not installed")
    )
    # worth a line only where vLLM is installed but not used
    level = logging.INFO if has_vllm and chosen != "vllm" and not quiet else logging.DEBUG
    log.log(level, "engine auto -> %s (%s)", chosen, why)
    return chosen


def check_sampling(engine: str, sampling: SamplingParams, model: str = "") -> None:
    """BonitoError, before any model loads, for sampling the engine cannot honour: vLLM's own
    limits, and settings carried from a vLLM SamplingParams (`sampling.extra`), which vLLM
    takes, a server gets in each request (as JSON), and our other engines cannot honour. An
    engine of another name (one of your own) gets them all."""
    chosen = choose_engine(engine, model, quiet=True) if engine in ENGINES else engine
    names = ", ".join(sorted(sampling.extra))
    if chosen == "vllm":
        from bonito.engines.vllm import check_vllm_sampling

        check_vllm_sampling(sampling)
    elif chosen == "openai":
        try:
            json.dumps(sampling.extra)
        except (TypeError, ValueError) as error:
            raise BonitoError(
                f"The sampling settings {names} go to the server as JSON, and one is not a JSON "
                f"value ({error}); leave it at vLLM's default, or use engine='vllm'."
            ) from error
    elif chosen in ENGINES and sampling.extra:
        raise BonitoError(
            f"The {chosen} engine cannot honour the sampling setting(s) {names}; leave them at "
            "vLLM's defaults, or use engine='vllm' or a vLLM server (engine='openai')."
        )


def load_engine(model: str, engine: str = "auto", **engine_kwargs: Any) -> Engine:
    """Load `model` with the named engine; engine_kwargs go to that backend unchanged. For
    "openai", `model` is the model the server is asked for unless served_model is given, and
    base_url is required."""
    chosen = choose_engine(engine, model)
    if chosen == "openai":
        from bonito.engines.openai import OpenAIEngine

        if "base_url" not in engine_kwargs:
            raise BonitoError(
                "The openai engine needs the server's address: base_url (--base-url), such as "
                "http://127.0.0.1:8000/v1."
            )
        return OpenAIEngine(model, **engine_kwargs)
    if chosen == "llamacpp":
        from bonito.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(model, **engine_kwargs)
    if chosen == "vllm":
        from bonito.engines.vllm import VLLMEngine

        return VLLMEngine(model, **engine_kwargs)
    from bonito.engines.transformers import TransformersEngine

    return TransformersEngine(model, **engine_kwargs)


__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "Failure",
    "Finished",
    "check_sampling",
    "choose_engine",
    "generate_all",
    "load_engine",
]
