"""Duplicate tasks within a run: exact after normalisation, near by MinHash estimate of word
3-gram Jaccard, always pointing at an earlier non-duplicate, the same in every process."""

import json
import os
import random
import subprocess
import sys

import pytest
from helpers import example_texts

from bonito.errors import BonitoError
from bonito.generate import dedup
from bonito.generate.dedup import Deduplicator

TEMPLATE = "Read the passage and answer the question.\n\n{}\n\nQuestion: What is the passage about?"


def passageless(items):
    """Tasks as (key, input, output) with no passage of their own."""
    return [(*item, "") for item in items]


def words(rng: random.Random, n: int) -> list[str]:
    """n pseudo-words from a vocabulary of 2,000, so random texts share few 3-grams."""
    return [f"w{rng.randrange(2000)}" for _ in range(n)]


def change(text_words: list[str], places: list[int]) -> str:
    changed = list(text_words)
    for place in places:
        changed[place] = f"changed{place}"
    return " ".join(changed)


def mixed_tasks(count: int = 300) -> list[tuple[str, str, str]]:
    """Unique tasks of 20-125 words with exact and one-word-changed copies of earlier ones."""
    rng, tasks = random.Random(7), []
    for n in range(count):
        roll = rng.random()
        if tasks and roll < 0.15:
            _, instruction, answer = rng.choice(tasks)
            instruction, answer = f"  {instruction.upper()} ", answer.replace(" ", "\n ")
        elif tasks and roll < 0.3:
            _, instruction, answer = rng.choice(tasks)
            text = instruction.split()
            instruction = change(text, [rng.randrange(len(text))])
        else:
            instruction, answer = (
                " ".join(words(rng, rng.randint(15, 120))),
                " ".join(words(rng, 5)),
            )
        tasks.append((f"t{n}", instruction, answer))
    return tasks


def borderline_pairs(count: int = 40) -> list[tuple[str, str, str]]:
    """Pairs whose true Jaccard similarity is 0.81 (two words changed in 60), so whether each is
    marked at 0.8 depends on the exact hash values."""
    rng, tasks = random.Random(3), []
    for n in range(count):
        text = words(rng, 60)
        tasks.append((f"p{n}", " ".join(text), ""))
        tasks.append((f"p{n}-copy", change(text, [15, 45]), ""))
    return tasks


def test_exact_duplicates_differ_only_in_case_whitespace_and_unicode_form():
    answers = Deduplicator(near=False).add_many(
        passageless(
            [
                ("a", "What is the capital of France?", "Paris"),
                ("b", "  WHAT is the\tcapital of\n\nfrance? ", "PARIS"),
                ("c", "Ｗｈａｔ is the capital of France?", "Paris\u00a0"),
                ("d", "What is the capital of France?", "Lyon"),
                ("e", "Is the street called Straße?", "Yes, the ﬁrst one."),
                ("f", "is the STREET called STRASSE?", "yes,  the first one."),
            ]
        )
    )
    assert answers == [None, "a", "a", None, None, "e"]


def test_input_and_output_are_not_merged_for_exact_duplicates():
    answers = Deduplicator(near=False).add_many(
        passageless([("a", "Pick one", "yes"), ("b", "Pick oney", "es")])
    )
    assert answers == [None, None]


def test_one_word_changed_in_a_long_task_is_a_near_duplicate_at_0_8():
    text = words(random.Random(1), 100)
    items = [("a", " ".join(text), "the answer"), ("b", change(text, [50]), "the answer")]
    assert Deduplicator(threshold=0.8).add_many(passageless(items)) == [None, "a"]


def test_tasks_sharing_half_their_shingles_are_not_marked_at_0_8():
    rng, items = random.Random(2), []
    for n in range(30):
        text = words(rng, 100)
        items += [
            (f"p{n}", " ".join(text), ""),
            (f"p{n}-half", change(text, list(range(5, 100, 10))), ""),
        ]
    assert Deduplicator(threshold=0.8).add_many(passageless(items)) == [None] * len(items)


def test_same_template_with_different_passages_is_not_marked():
    passages = example_texts()
    items = [
        (f"t{i}", TEMPLATE.format(p), "It is about the passage.") for i, p in enumerate(passages)
    ]
    assert len(items) >= 10
    assert Deduplicator(threshold=0.8).add_many(passageless(items)) == [None] * len(items)
    alone = [
        (key, "Summarize the passage in one sentence.", "A short summary.", p)
        for (key, _, _), p in zip(items, passages, strict=True)
    ]
    assert Deduplicator(threshold=0.8).add_many(alone) == [None] * len(items)


def test_on_one_passage_only_the_words_outside_it_count():
    """Different questions about one long passage share most words (the passage) yet are not
    duplicates; the same question with one word of a long answer changed is."""
    passage = " ".join(words(random.Random(5), 300))
    answer = " ".join(words(random.Random(6), 40))
    items = [
        ("a", f"{passage}\n\nWho wrote the report?", "The council."),
        ("b", f"{passage}\n\nWhen does the work start?", "Next year."),
        ("c", f"{passage}\n\nSummarize the passage.", answer),
        ("d", f"{passage}\n\nSummarize the passage.", change(answer.split(), [20])),
        ("e", f"{passage}\n\nWho wrote the report?", "The council."),
    ]
    assert Deduplicator().add_many([(*item, passage) for item in items]) == [
        None,
        None,
        None,
        "c",
        "a",
    ]
    assert Deduplicator().add_many(passageless(items))[:3] == [None, "a", "a"]  # without it


def test_near_false_finds_only_exact_duplicates():
    text = words(random.Random(1), 100)
    items = [
        ("a", " ".join(text), "x"),
        ("b", change(text, [50]), "x"),
        ("c", " ".join(text).upper(), "X"),
    ]
    assert Deduplicator(near=False).add_many(passageless(items)) == [None, None, "a"]
    assert Deduplicator(near=True).add_many(passageless(items)) == [None, "a", "a"]


def test_answers_name_an_earlier_non_duplicate():
    tasks = mixed_tasks()
    answers = Deduplicator().add_many(passageless(tasks))
    place = {key: i for i, (key, _, _) in enumerate(tasks)}
    marked = [(i, place[a]) for i, a in enumerate(answers) if a is not None]
    assert len(marked) > 50
    assert all(original < i and answers[original] is None for i, original in marked)


def test_a_copy_of_a_duplicate_names_the_original():
    items = [
        ("a", "Name a colour.", "Red"),
        ("b", "NAME a colour.", "red"),
        ("c", "name a colour.", "RED"),
    ]
    assert Deduplicator().add_many(passageless(items)) == [None, "a", "a"]


def test_a_task_close_to_two_earlier_ones_names_the_first():
    rng = random.Random(5)
    common, tail_a, tail_b = words(rng, 300), words(rng, 100), words(rng, 100)
    items = [
        ("a", " ".join(common + tail_a), ""),
        ("b", " ".join(common + tail_b), ""),
        ("c", " ".join(common), ""),
    ]
    assert Deduplicator(threshold=0.67, num_perm=512).add_many(passageless(items)) == [
        None,
        None,
        "a",
    ]


def test_short_and_empty_tasks():
    items = [
        ("a", "", ""),
        ("b", " \n", "\t"),
        ("c", "Yes", ""),
        ("d", "", "yes"),
        ("e", "No", ""),
        ("f", "odd \ud800 text", "kept"),
    ]
    assert Deduplicator().add_many(passageless(items)) == [None, "a", None, "c", None, None]


def family_tasks() -> list[tuple[str, str, str]]:
    """Tasks built on five shared openings, so many share bands, with one-word-changed copies."""
    rng, tasks = random.Random(11), []
    openings = [words(rng, 40) for _ in range(5)]
    for n in range(400):
        if tasks and rng.random() < 0.3:
            text = rng.choice(tasks)[1].split()
            text = change(text, [rng.randrange(len(text))])
        else:
            text = " ".join(rng.choice(openings) + words(rng, rng.randint(5, 30)))
        tasks.append((f"t{n}", text, ""))
    return tasks


def test_answers_match_comparing_every_pair_of_signatures():
    tasks = mixed_tasks() + family_tasks()
    reference = Deduplicator()
    signatures = reference._signatures_of([dedup.normalise(i + " " + o) for _, i, o in tasks])
    kept, expected = [], []
    for n in range(len(tasks)):
        close = [k for k in kept if (signatures[k] == signatures[n]).mean() >= 0.8]
        expected.append(tasks[close[0]][0] if close else None)
        kept += [] if close else [n]
    assert sum(a is not None for a in expected) > 150
    assert Deduplicator().add_many(passageless(tasks)) == expected


def test_answers_do_not_depend_on_how_tasks_are_split_into_calls(monkeypatch):
    tasks = mixed_tasks()
    whole = Deduplicator().add_many(passageless(tasks))
    one_by_one = Deduplicator()
    assert [one_by_one.add_many(passageless([task]))[0] for task in tasks] == whole
    monkeypatch.setattr(dedup, "STEP", 7)
    assert Deduplicator().add_many(passageless(tasks)) == whole


def test_fresh_instances_agree_and_a_rebuilt_index_answers_the_same():
    tasks = mixed_tasks()
    first, later = tasks[:200], tasks[200:]
    running = Deduplicator()
    answers = running.add_many(passageless(first))
    assert Deduplicator().add_many(passageless(first)) == answers
    rebuilt = Deduplicator()
    kept = [task for task, answer in zip(first, answers, strict=True) if answer is None]
    assert rebuilt.add_many(passageless(kept)) == [None] * len(kept)
    expected = running.add_many(passageless(later))
    assert any(expected)
    assert rebuilt.add_many(passageless(later)) == expected


def test_answers_are_the_same_in_another_process():
    tasks = borderline_pairs()
    here = Deduplicator().add_many(passageless(tasks))
    marked = sum(a is not None for a in here)
    assert 5 < marked < len(tasks) // 2, "the pairs should sit on both sides of the threshold"
    assert Deduplicator(seed=1).add_many(passageless(tasks)) != here, (
        "the answers should hang on the hashes"
    )
    script = (
        "import json, sys\n"
        "from bonito.generate.dedup import Deduplicator\n"
        "print(json.dumps(Deduplicator().add_many(json.load(sys.stdin))))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(passageless(tasks)),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(done.stdout) == here


@pytest.mark.parametrize("threshold", [0, -0.1, 1.01, float("nan"), "0.8", True])
def test_bad_threshold(threshold):
    with pytest.raises(BonitoError, match=r"threshold must be .*\(0, 1\]"):
        Deduplicator(threshold=threshold)


@pytest.mark.parametrize("num_perm", [8, 15, 64.0, True])
def test_bad_num_perm(num_perm):
    with pytest.raises(BonitoError, match="num_perm must be an integer of at least 16"):
        Deduplicator(num_perm=num_perm)


def test_edge_values_are_accepted():
    Deduplicator(threshold=1, num_perm=16)
    identical = [("a", "one two three four", ""), ("b", "One two three four", "")]
    assert Deduplicator(threshold=1.0).add_many(passageless(identical)) == [None, "a"]
