"""process_docs for a plain-text corpus (recipes/own_data/pubmed_text.yaml): PubMedQA's abstracts, the question and
its long answer as one document per record, in a ``text`` field."""

import datasets


def abstracts(dataset: datasets.Dataset) -> datasets.Dataset:
    return datasets.Dataset.from_list([
        {"text": "\n".join(record["contexts"]) + "\n" + record["long_answer"]} for record in dataset
    ])
