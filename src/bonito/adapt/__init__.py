"""Adapting a target model to a domain: fine-tuning on generated tasks and the whole loop with
its table."""
