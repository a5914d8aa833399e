"""What a CPU benchmark ran on, recorded at the top of its JSON."""

from __future__ import annotations

import platform

import torch
import transformers


def cpu_facts() -> dict[str, object]:
    """Device, torch threads, processor and library versions."""
    return {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
