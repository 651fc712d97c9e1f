"""Every lm-eval task YAML in eval/tasks loads, and produces well-formed prompts, choices and targets."""

from __future__ import annotations

import pytest
from lm_eval.tasks import TaskManager

from trimllm.evaluation import TASKS_DIR, resolve_tasks, task_groups

ALL_TASKS = sorted(t for tasks in task_groups().values() for t in tasks)


@pytest.fixture(scope="module")
def loaded():
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return manager.load(ALL_TASKS)["tasks"]


def test_every_yaml_is_indexed_and_grouped():
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    yamls = {p.stem for p in TASKS_DIR.glob("trimllm_*.yaml")}
    groups = set(task_groups())
    assert yamls == set(ALL_TASKS) | groups
    assert set(ALL_TASKS) <= set(manager.all_subtasks) and groups <= set(manager.all_groups)
    assert len(ALL_TASKS) == 33


@pytest.mark.parametrize("name", ALL_TASKS)
def test_task_docs_are_well_formed(loaded, name):
    task = next(t for key, t in loaded.items() if getattr(key, "task", key) == name or str(key).endswith(name))
    docs = list(task.test_docs())
    assert len(docs) > 0
    metrics = {m["metric"] for m in task.config.metric_list}
    assert "acc" in metrics
    for doc in docs[:25]:
        text, choices, target = task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)
        assert len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)
        if isinstance(text, int):  # partial scoring (WinoGrande): text picks the gold context
            assert 0 <= text < len(choices) and isinstance(target, str)
        else:
            assert isinstance(text, str) and text.strip()
            target = target if isinstance(target, int) else choices.index(target)
            assert 0 <= target < len(choices)


def test_standard_prompts_match_lm_eval():
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    sciq = next(iter(manager.load(["trimllm_sciq"])["tasks"].values()))
    doc = next(iter(sciq.test_docs()))
    assert sciq.doc_to_text(doc) == f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"
    assert sciq.doc_to_choice(doc)[sciq.doc_to_target(doc)] == doc["correct_answer"]


def test_short_names_resolve_and_typos_are_caught():
    assert resolve_tasks(["sciq", "general", "trimllm_fpb"]) == ["trimllm_sciq", "trimllm_general", "trimllm_fpb"]
    with pytest.raises(ValueError, match="Did you mean 'sciq'"):
        resolve_tasks(["sciqq"])


@pytest.mark.parametrize(
    "task_name, dataset",
    [("trimllm_sciq", "sciq"), ("trimllm_pubmedqa", "pubmedqa"), ("trimllm_medmcqa", "medmcqa"),
     ("trimllm_medqa", "medqa_usmle"), ("trimllm_fpb", "financial_phrasebank"),
     ("trimllm_legalbench_abercrombie", "legalbench"), ("trimllm_mmlu_anatomy", "mmlu"),
     ("trimllm_arc_challenge", "arc_challenge")],
)
def test_calibration_prompts_equal_the_evaluation_prompts(loaded, task_name, dataset):
    from trimllm.prompts import mc_item

    task = next(t for key, t in loaded.items() if str(getattr(key, "task", key)).endswith(task_name))
    for doc in list(task.test_docs())[:10]:
        item = mc_item(dataset, doc)
        assert item.context == task.fewshot_context(doc, 0)  # what lm-eval feeds the model: description + text
        assert item.context.endswith(task.doc_to_text(doc))
        assert list(item.choices) == [" " + c for c in task.doc_to_choice(doc)]
        target = task.doc_to_target(doc)
        assert item.gold == (target if isinstance(target, int) else task.doc_to_choice(doc).index(target))


def test_every_trainable_data_set_names_the_task_that_tests_it():
    """``trimllm compress`` evaluates the recipe's data set on its test side through lm-eval: each bundled set a
    recipe can train on maps to a task lm-eval knows, and that task reads the same data set."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from trimllm.prompts import _configs, eval_task
    from trimllm.validation import load_recipe

    assert eval_task("financial_phrasebank") == "trimllm_fpb" and eval_task("sciq") == "trimllm_sciq"
    for name, path in _configs().items():
        if path.name.startswith("_"):  # a set of subset tasks (mmlu, legalbench): none tests it whole; compress refuses it
            assert eval_task(name) == name
            continue
        task = resolve_tasks([eval_task(name)])[0]
        assert load_yaml(TASKS_DIR / f"{task}.yaml", resolve_func=False)["dataset_kwargs"]["name"] == name
    from trimllm.formats import test_task

    assert test_task(load_recipe(None, ["data.task=financial_phrasebank"]).data) == "trimllm_fpb"
