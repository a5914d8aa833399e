"""Training: the one trainer (recipe, tokenizing, LoRA, checkpoints), generator training data
from promptsource templates (ctga), training a generator, and the offline tiny generator."""
