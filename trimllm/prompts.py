"""Prompt formats of the bundled data sets, shared by calibration, training and the lm-eval tasks.

:func:`mc_item` turns a record into ``(context, choices, gold)`` exactly as the corresponding lm-eval task in
``eval/tasks`` presents it (a test checks the two agree), so a block scored on calibration data is scored on the
prompts the model is evaluated with. Choices carry lm-eval's target delimiter (a leading space).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trimllm.registry import did_you_mean


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice example: the model scores each ``context + choice``; ``gold`` indexes ``choices``."""

    context: str
    choices: tuple[str, ...]
    gold: int
    uid: str = ""


# --- prompt texts (also imported by eval/tasks/trimllm_tasks.py) ------------------------------------------------


def sciq_text(doc) -> str:
    return f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"


def pubmedqa_text(doc) -> str:
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(doc["contexts"]), doc["question"])


def medmcqa_text(doc) -> str:
    options = [doc["opa"], doc["opb"], doc["opc"], doc["opd"]]
    lines = [f"Question: {doc['question']}", "Choices:"] + [f"{letter}. {o}" for letter, o in zip("ABCD", options, strict=True)]
    return "\n".join(lines) + "\nAnswer:"


def medqa_text(doc) -> str:
    options = "".join(f"{letter}. {doc['options'][letter]}\n" for letter in sorted(doc["options"]))
    return f"Question: {doc['question']}\n{options}Answer:"


FPB_LABELS = ["negative", "neutral", "positive"]


def fpb_text(doc) -> str:
    return (
        f"Sentence: {doc['sentence']}\n"
        "Question: Is the sentiment of this financial news sentence negative, neutral or positive?\nAnswer:"
    )


LEGAL_QUESTIONS = {
    "hearsay": "Is this evidence hearsay?",
    "learned_hands_courts": "Does the post discuss the logistics of how a person can interact with a lawyer or the court system?",
    "abercrombie": "Under the Abercrombie classification, is this mark generic, descriptive, suggestive, arbitrary or fanciful?",
    "proa": "Does this statute contain a private right of action?",
    "personal_jurisdiction": "Does the court have personal jurisdiction over the defendant?",
    "unfair_tos": "Which category of potentially unfair terms of service does this clause belong to?",
    **{f"diversity_{n}": "Is there diversity jurisdiction?" for n in range(1, 6)},
}
LEGAL_CHOICES = {
    "abercrombie": ["generic", "descriptive", "suggestive", "arbitrary", "fanciful"],
    "unfair_tos": [
        "Arbitration", "Choice of law", "Content removal", "Contract by using", "Jurisdiction",
        "Limitation of liability", "Other", "Unilateral change", "Unilateral termination",
    ],
}


def legal_text(doc) -> str:
    return f"{doc['text']}\nQuestion: {LEGAL_QUESTIONS[doc['task']]}\nAnswer:"


def legal_choices(doc) -> list[str]:
    return LEGAL_CHOICES.get(doc["task"], ["No", "Yes"])


def mmlu_text(doc) -> str:
    subject = doc["subject"].replace("_", " ")
    options = "".join(f"{letter}. {choice}\n" for letter, choice in zip("ABCD", doc["choices"], strict=True))
    return (
        f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        f"{doc['question'].strip()}\n{options}Answer:"
    )


def arc_text(doc) -> str:
    return f"Question: {doc['question']}\nAnswer:"


# --- records -> MCItem -----------------------------------------------------------------------------------------


def _mc(context: str, choices, gold: int, doc) -> MCItem:
    return MCItem(context, tuple(" " + c for c in choices), gold, doc.get("_uid", ""))


_FORMATS: dict[str, Callable[[dict], MCItem]] = {
    "sciq": lambda d: _mc(sciq_text(d), [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]], 3, d),
    "pubmedqa": lambda d: _mc(pubmedqa_text(d), ["yes", "no", "maybe"], ["yes", "no", "maybe"].index(d["final_decision"]), d),
    "medmcqa": lambda d: _mc(medmcqa_text(d), list("ABCD"), d["cop"], d),
    "medqa_usmle": lambda d: _mc(medqa_text(d), sorted(d["options"]), sorted(d["options"]).index(d["answer_idx"]), d),
    "financial_phrasebank": lambda d: _mc(fpb_text(d), FPB_LABELS, FPB_LABELS.index(d["label"]), d),
    "legalbench": lambda d: _mc(legal_text(d), legal_choices(d), legal_choices(d).index(d["answer"]), d),
    "mmlu": lambda d: _mc(mmlu_text(d), list("ABCD"), d["answer"], d),
    "arc_easy": lambda d: _mc(arc_text(d), d["choices"]["text"], d["choices"]["label"].index(d["answerKey"]), d),
    "arc_challenge": lambda d: _mc(arc_text(d), d["choices"]["text"], d["choices"]["label"].index(d["answerKey"]), d),
}


def mc_item(name: str, record: dict) -> MCItem:
    """The multiple-choice view of a record of data set ``name``."""
    if name not in _FORMATS:
        raise ValueError(
            f"No multiple-choice prompt for data set {name!r}.{did_you_mean(name, _FORMATS)} "
            f"Available: {', '.join(sorted(_FORMATS))}."
        )
    return _FORMATS[name](record)


def supported() -> list[str]:
    return sorted(_FORMATS)
