"""Prompts of the bundled data sets, derived from their lm-eval task YAMLs in ``eval/tasks`` (the single source).

:func:`mc_item` renders a record with lm-eval's own task object for its data set (``fewshot_context`` at zero shots,
``doc_to_choice``, ``doc_to_target``), so the prompt a block is scored and trained on is, by construction, the
prompt the model is evaluated with. Choices carry the task's target delimiter (a leading space), as lm-eval
scores ``context + delimiter + choice``.

A data set's task is the YAML that loads it whole (``dataset_kwargs.name`` without a ``subset``), or, for sets
evaluated per subset (MMLU subjects, LegalBench tasks), the ``_<name>_template`` those subset tasks include: its
templates read the subject or task from each record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from trimllm.registry import did_you_mean

TASKS_DIR = Path(__file__).resolve().parents[1] / "eval" / "tasks"
PREFIX = "trimllm_"


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice example: the model scores each ``context + choice``; ``gold`` indexes ``choices``."""

    context: str
    choices: tuple[str, ...]
    gold: int
    uid: str = ""


def mc_item(name: str, record: dict) -> MCItem:
    """The multiple-choice view of a record of data set ``name``, as lm-eval presents it zero-shot."""
    return item_from_task(_task(name), record)


def item_from_task(task, record: dict) -> MCItem:
    """The multiple-choice view of ``record`` through an lm-eval task object (a bundled set's or a user's)."""
    choices = task.doc_to_choice(record)
    gold = task.doc_to_target(record)
    gold = gold if isinstance(gold, int) else choices.index(gold)  # lm-eval's rule for a target given as text
    delimiter = task.config.target_delimiter
    return MCItem(task.fewshot_context(record, 0), tuple(delimiter + c for c in choices), gold, record.get("_uid", ""))


def supported() -> list[str]:
    """Data sets with a multiple-choice task that trimllm can train and score on (general-only sets excluded)."""
    return sorted(_configs())


@cache
def _configs() -> dict[str, Path]:
    """``{data set: YAML}``: the task that loads each data set whole, else its subset tasks' template."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from trimllm.data import DATASETS

    found = {}
    for path in sorted(TASKS_DIR.glob(f"{PREFIX}*.yaml")):
        config = load_yaml(path, resolve_func=False)
        kwargs = config.get("dataset_kwargs") or {}
        if config.get("output_type") != "multiple_choice" or kwargs.get("name") not in DATASETS:
            continue
        if DATASETS[kwargs["name"]].general_only:
            continue  # PIQA, HellaSwag, BoolQ, WinoGrande measure general ability: never trained or scored on
        template = TASKS_DIR / f"_{kwargs['name']}_template"
        if "subset" not in kwargs:
            found[kwargs["name"]] = path
        elif template.is_file():
            found.setdefault(kwargs["name"], template)
    return found


def eval_task(name: str) -> str:
    """lm-eval's task that evaluates bundled data set ``name`` whole (``trimllm_fpb`` for ``financial_phrasebank``);
    ``name`` itself where none does (a set of subset tasks: its group, or a user's task)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    path = _configs().get(name)
    if path is None or path.name.startswith("_"):
        return name
    return load_yaml(path, resolve_func=False).get("task", f"{PREFIX}{name}")


@cache
def _task(name: str):
    """lm-eval's task object for data set ``name`` (built once; its prompt methods read only the record)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    configs = _configs()
    if name not in configs:
        raise ValueError(
            f"No multiple-choice prompt for data set {name!r}.{did_you_mean(name, configs)} "
            f"Available: {', '.join(sorted(configs))}."
        )
    config = load_yaml(configs[name])
    config.setdefault("task", f"{PREFIX}{name}")
    config["dataset_kwargs"] = {"name": name}  # the whole set (a template names no subset)
    return task_object(config)


def task_object(config: dict):
    """lm-eval's ``ConfigurableTask`` for a task config (its data loaded as the config says)."""
    from lm_eval.api.task import ConfigurableTask

    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # lm-eval notes at init that custom kwargs exist; nothing a user can act on
    try:
        return ConfigurableTask(config=config)
    finally:
        quiet.setLevel(level)
