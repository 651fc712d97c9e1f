"""trimllm's task definitions against lm-eval's own built-in task YAMLs, shipped in the installed ``lm_eval``
package: on the bundled records, the same prompt, the same choices and the same target. lm-eval's tasks read
their data from the hub, which is offline here, so each built-in task is given the bundled test-side records
instead (a schema adapter where the hub copy names a field differently); everything else is lm-eval's own
config, templates and ``!function`` code."""

from __future__ import annotations

from pathlib import Path

import datasets
import lm_eval
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from trimllm.data import load_side
from trimllm.prompts import TASKS_DIR, mc_item

BUILTIN = Path(lm_eval.__file__).parent / "tasks"


def _boolq(record: dict) -> dict:
    return {**record, "label": int(record["answer"])}  # super_glue's boolq: `label`; the bundled google/boolq: `answer`


def _pubmedqa(record: dict) -> dict:
    return {**record, "QUESTION": record["question"], "CONTEXTS": record["contexts"]}  # bigbio's field names


CASES = {  # data set: (lm-eval's YAML, trimllm's task, schema adapter)
    "sciq": ("sciq/sciq.yaml", "trimllm_sciq", None),
    "arc_easy": ("arc/arc_easy.yaml", "trimllm_arc_easy", None),
    "arc_challenge": ("arc/arc_challenge.yaml", "trimllm_arc_challenge", None),
    "piqa": ("piqa/piqa.yaml", "trimllm_piqa", None),
    "hellaswag": ("hellaswag/hellaswag.yaml", "trimllm_hellaswag", None),
    "boolq": ("super_glue/boolq/default.yaml", "trimllm_boolq", _boolq),
    "winogrande": ("winogrande/default.yaml", "trimllm_winogrande", None),
    "pubmedqa": ("pubmedqa/pubmedqa.yaml", "trimllm_pubmedqa", _pubmedqa),
}
N_DOCS = 40


def builtin_task(yaml_path: str, records: list[dict]) -> ConfigurableTask:
    """lm-eval's built-in task, its data replaced by ``records`` in every split it names."""
    config = load_yaml(BUILTIN / yaml_path)
    config.pop("dataset_path", None)
    config.pop("dataset_name", None)
    splits = {config[k] for k in ("training_split", "validation_split", "test_split") if config.get(k)}
    config["custom_dataset"] = lambda **_: datasets.DatasetDict(
        {split: datasets.Dataset.from_list(records) for split in splits})
    return ConfigurableTask(config=config)


def eval_docs(task: ConfigurableTask) -> list[dict]:
    return list(task.test_docs() if task.has_test_docs() else task.validation_docs())[:N_DOCS]


def rendered(task: ConfigurableTask, doc: dict) -> tuple:
    """(prompt, choices, target) as lm-eval scores the doc; a target given as text becomes its choice index."""
    choices = task.doc_to_choice(doc)
    target = task.doc_to_target(doc)
    if isinstance(target, str) and target in choices:
        target = choices.index(target)
    return task.fewshot_context(doc, 0), choices, target


@pytest.fixture(scope="module")
def trimllm_tasks():
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return manager.load([task for _, task, _ in CASES.values()])["tasks"]


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_trimllm_task_renders_what_lm_eval_builtin_task_renders(trimllm_tasks, dataset):
    yaml_path, name, adapt = CASES[dataset]
    ours = next(t for key, t in trimllm_tasks.items() if str(getattr(key, "task", key)).endswith(name))
    records = load_side(dataset, "test")[:N_DOCS]
    theirs = builtin_task(yaml_path, [adapt(r) if adapt else r for r in records])
    ours_docs, their_docs = eval_docs(ours), eval_docs(theirs)
    assert len(ours_docs) == len(their_docs) == min(N_DOCS, len(records))
    answers = set()
    for mine, other in zip(ours_docs, their_docs, strict=True):
        context, choices, target = rendered(ours, mine)
        assert (context, choices, target) == rendered(theirs, other)
        answers.add(choices[target] if isinstance(target, int) else target)
    assert len(answers) > 1  # the gold answers differ: the comparison is not of one constant


@pytest.mark.parametrize("dataset", ["sciq", "arc_easy", "pubmedqa"])
def test_training_items_are_lm_eval_builtin_requests(dataset):
    """What trimllm trains and scores on (``mc_item``) is what lm-eval's built-in task asks the model."""
    yaml_path, _, adapt = CASES[dataset]
    records = load_side(dataset, "train")[:N_DOCS]
    theirs = builtin_task(yaml_path, [adapt(r) if adapt else r for r in records])
    for record, doc in zip(records, eval_docs(theirs), strict=True):
        item = mc_item(dataset, record)
        context, choices, target = rendered(theirs, doc)
        assert item.context == context
        assert item.choices == tuple(theirs.config.target_delimiter + c for c in choices)
        assert item.gold == target
