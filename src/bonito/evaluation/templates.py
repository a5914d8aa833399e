"""Prompt templates for the evaluated tasks, five per task type, written in the spirit of
promptsource's templates for these tasks (BoolQ, PubMedQA, MNLI/ANLI, SQuAD). The scored answers
are the example's choices as written; classification templates show them (`{options}`)."""

from __future__ import annotations

from dataclasses import dataclass

from bonito.errors import BonitoError
from bonito.evaluation.labelled import Example


@dataclass(frozen=True)
class Template:
    """An instruction with the fields {context}, {question} (for nli also {hypothesis}) and
    {options}, the choices as "A, B or C"."""

    name: str
    text: str

    def render(self, example: Example) -> str:
        return self.text.format(
            context=example.context,
            question=example.question,
            hypothesis=example.question,
            options=options(example.choices),
        )


def options(choices: tuple[str, ...]) -> str:
    """Choices as a prompt lists them: "Yes or No", "Yes, Maybe or No"."""
    return " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "ynqa": (
        Template(
            "based_on_passage",
            "{context}\n\nBased on the passage above, answer {options}: {question}",
        ),
        Template(
            "question_context",
            "Question: {question}\n\nContext: {context}\n\nAnswer with {options}.",
        ),
        Template(
            "read_and_answer",
            "Read the text and answer the question with {options}.\n\n"
            "Text: {context}\n\nQuestion: {question}",
        ),
        Template("exam", "{context}\n\nQ: {question}\nOptions: {options}\nA:"),
        Template(
            "after_reading",
            "After reading this passage, I have a question: {question} {options}?\n\n{context}",
        ),
    ),
    "nli": (
        Template(
            "can_we_conclude",
            '{context}\n\nBased on the paragraph above, can we conclude that "{hypothesis}"? '
            "{options}?",
        ),
        Template("gpt3_style", "{context}\nQuestion: {hypothesis} {options}?"),
        Template(
            "does_it_follow",
            "Premise: {context}\nHypothesis: {hypothesis}\n\n"
            "Does the premise entail the hypothesis? Answer {options}.",
        ),
        Template(
            "justified",
            'Given that "{context}", is it justified to say that "{hypothesis}"? {options}?',
        ),
        Template(
            "must_be_true",
            '{context}\n\nKeeping in mind the above text, must it be true that "{hypothesis}"? '
            "{options}?",
        ),
    ),
    "exqa": (
        Template("q_a", "{context}\n\nQ: {question}\nA:"),
        Template(
            "copy_span",
            "Read the following passage and answer the question by copying a span from it.\n\n"
            "{context}\n\nQuestion: {question}\nAnswer:",
        ),
        Template(
            "extract",
            "Extract the answer to the question from the text.\n\n"
            "Question: {question}\nText: {context}",
        ),
        Template(
            "answer_in_text",
            'Given the following passage\n\n"{context}",\n\nanswer the following question. '
            "Note that the answer is present within the text.\n\nQuestion: {question}",
        ),
        Template(
            "tell_me",
            'I know that the answer to the question "{question}" is in "{context}". '
            "Can you tell me what it is?",
        ),
    ),
}


def select_templates(task: str, spec: str | None = None) -> list[Template]:
    """The templates of `task` that `spec` names: None or "all" for every one, a number N for the
    first N, or template names separated by commas."""
    templates = TEMPLATES[task]
    names = ", ".join(t.name for t in templates)
    if spec is None or spec == "all":
        return list(templates)
    if spec.isdigit():
        if not 1 <= int(spec) <= len(templates):
            raise BonitoError(
                f"Ask for 1 to {len(templates)} {task} templates, not {spec} ({names})."
            )
        return list(templates[: int(spec)])
    by_name = {t.name: t for t in templates}
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    if unknown or not wanted:
        raise BonitoError(
            f"No {task} template is called {', '.join(unknown) or repr(spec)}; "
            f"the {task} templates are {names}."
        )
    return [by_name[name] for name in dict.fromkeys(wanted)]
