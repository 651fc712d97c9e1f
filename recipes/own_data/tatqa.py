"""process_docs for TAT-QA (recipes/own_data/tatqa_completion.yaml): one financial-report context with many
questions -> one flat record per question, as lm-eval's ``process_docs`` hook does (``Dataset -> Dataset``)."""

import datasets


def _context(record: dict) -> str:
    table = "\n".join(" | ".join(cell for cell in row) for row in record["table"]["table"])
    paragraphs = "\n".join(p["text"] for p in sorted(record["paragraphs"], key=lambda p: p["order"]))
    return f"Table:\n{table}\n{paragraphs}"


def _answer(question: dict) -> str:
    answer = question["answer"]
    text = ", ".join(str(a) for a in answer) if isinstance(answer, list) else str(answer)
    return f"{text} {question['scale']}".strip() if question.get("scale") else text


def flatten(dataset: datasets.Dataset) -> datasets.Dataset:
    rows = [{"context": _context(record), "question": q["question"], "answer": _answer(q)}
            for record in dataset for q in sorted(record["questions"], key=lambda q: q["order"])]
    return datasets.Dataset.from_list(rows)
