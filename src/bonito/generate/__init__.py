"""Completions to judged tasks: the task mix, requests sent to an engine and their samples
parsed and checked (judge), and duplicates found (dedup)."""
