"""Loaders and prompt functions for trimllm's lm-eval tasks (referenced from the YAML files as ``!function``).

Data comes from :mod:`trimllm.data`, which resolves the data directory at run time (``$TRIMLLM_DATA_DIR`` or
``shared/data`` beside the repository), so the tasks work from any working directory, unlike relative
``data_files`` which lm-eval resolves against the current directory. Prompts of the general and SciQ / PubMedQA /
MedMCQA / MMLU tasks follow lm-eval's standard tasks so the numbers compare with published ones.
"""

from __future__ import annotations

import re

import datasets

from trimllm.data import load_side

# Only the columns the prompts need: some sets have optional per-row fields that datasets cannot type consistently.
COLUMNS = {
    "legalbench": ("task", "index", "text", "answer"),
}


def load(name: str, subset: str | None = None, **_unused) -> datasets.DatasetDict:
    """A DatasetDict with trimllm's ``train`` side and ``test`` side of a bundled data set.

    Args:
        name: data set name in :data:`trimllm.data.DATASETS`.
        subset: MMLU subject or LegalBench task to keep (rows whose ``subject`` / ``task`` equals it).
    """
    splits = {}
    for side in ("train", "test"):
        records = load_side(name, side)
        if subset is not None:
            records = [r for r in records if r.get("subject", r.get("task")) == subset]
        if name in COLUMNS:
            records = [{k: r[k] for k in (*COLUMNS[name], "_uid")} for r in records]
        if records:
            splits[side] = datasets.Dataset.from_list(records)
    return datasets.DatasetDict(splits)


# --- prompt texts too long for a one-line template (trimllm.prompts derives its prompts from these tasks) -------


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


def medqa_target(doc) -> int:
    return sorted(doc["options"]).index(doc["answer_idx"])


def fpb_target(doc) -> int:
    return FPB_LABELS.index(doc["label"])


def legal_target(doc) -> int:
    return legal_choices(doc).index(doc["answer"])


# --- general ---------------------------------------------------------------------------------------------------


def _clean_hellaswag(text: str) -> str:
    # WikiHow contexts carry bracketed markup ("[title]", "[step]") that lm-eval's standard task removes.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    def convert(doc):
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _clean_hellaswag(doc["activity_label"] + ": " + context),
            "choices": [_clean_hellaswag(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(convert)


def boolq_target(doc) -> int:
    return int(bool(doc["answer"]))


# Winogrande is scored by partial evaluation, as in lm-eval: the two contexts are the sentence up to the blank
# filled with each option, the shared continuation is the rest of the sentence.
def winogrande_answer_index(doc) -> int:
    return int(doc["answer"]) - 1


def winogrande_contexts(doc) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]


def winogrande_continuation(doc) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()
