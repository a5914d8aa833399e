"""bonito: turn unannotated text into instruction-tuning datasets with bonito generators."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bonito.errors import BonitoError
from bonito.prompt.format import Rejection, Task, build_prompt, parse_task
from bonito.prompt.sampling import SamplingParams
from bonito.prompt.task_types import TASK_TYPES, TaskType, resolve_task_type

if TYPE_CHECKING:
    from bonito.api import Bonito
    from bonito.train.generator import train_generator

_LAZY = {"Bonito": "bonito.api", "train_generator": "bonito.train.generator"}  # import torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bonito' has no attribute {name!r}")


__all__ = [
    "TASK_TYPES",
    "Bonito",
    "BonitoError",
    "Rejection",
    "SamplingParams",
    "Task",
    "TaskType",
    "build_prompt",
    "parse_task",
    "resolve_task_type",
    "train_generator",
]
__version__ = "0.1.0"
