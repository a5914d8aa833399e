"""The bonito format: task types, building prompts and parsing tasks, answer checks, sampling
parameters. No torch, no models."""
