"""Evaluating a target model on labelled data (docs/evaluation.md): the labelled schema and
converters, prompt templates, ranked classification and greedy generation, metrics."""

from bonito.evaluation.evaluate import Evaluation, TemplateResult, evaluate, evaluate_model
from bonito.evaluation.labelled import DATA_FORMATS, TASKS, Example, load_examples
from bonito.evaluation.prompts import PROMPT_FORMATS, target_prompt
from bonito.evaluation.templates import TEMPLATES, Template, select_templates

__all__ = [
    "DATA_FORMATS",
    "PROMPT_FORMATS",
    "TASKS",
    "TEMPLATES",
    "Evaluation",
    "Example",
    "Template",
    "TemplateResult",
    "evaluate",
    "evaluate_model",
    "load_examples",
    "select_templates",
    "target_prompt",
]
