"""Every check of what a user gives, before any model loads: a recipe's values (:func:`semantic_problems`, run by
:func:`load_recipe` and so by ``trimllm validate``) and ``trimllm score``'s options. Each returns every problem at once,
as messages that say what was given, what was expected and how to fix it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from trimllm.config import Recipe
from trimllm.errors import RecipeError
from trimllm.plugin_options import option_problems, resolve_defaults
from trimllm.recipe_file import build_recipe, read_recipe
from trimllm.registry import did_you_mean


def load_recipe(path: str | Path | None, overrides: list[str] = (), job: str = "train") -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides, read v0.2 keys in their new spelling, fill in the plug-ins'
    option defaults and check every value; raise :class:`RecipeError` listing all problems. ``job="compress"``:
    the recipe's schedule does not run (compress trains a full-depth reference, then ``oneshot`` healings from it,
    whose ``stage0`` teacher is the reference), so what the schedule needs and provides is not checked."""
    raw, problems, source = read_recipe(path, overrides)
    recipe = build_recipe(raw, problems)
    problems += source_mapping(recipe.data)
    problems += semantic_problems(resolve_defaults(recipe), schedule_runs=job != "compress")
    if problems:
        raise RecipeError(problems, source)
    return recipe


def source_mapping(cfg) -> list[str]:
    """``data.source`` as a mapping of split to file (``{train: a.jsonl, test: b.jsonl}``, the ``data_files`` users
    write for ``datasets``) becomes the train file as the source and the mapping as ``data.splits``, the form every
    later step reads (and resolved.yaml shows; the task is named after the train file unless ``data.name`` says
    otherwise). Its problems, if any."""
    if not isinstance(cfg.source, dict):
        return []
    files = cfg.source
    problems = []
    if cfg.splits:
        problems.append("data.source is a mapping of split to file and data.splits is set too; give the files once "
                        "(data.source: {train: a.jsonl, test: b.jsonl}, or data.source: FOLDER with data.splits)")
    if set(files) - {"train", "validation", "test"} or "train" not in files:
        problems.append(f"data.source as a mapping has the keys {sorted(files)}; expected train and optionally test "
                        "and validation, each a file (e.g. {train: train.jsonl, test: test.jsonl})")
    if any(not isinstance(f, str) or not f.strip() for f in files.values()):
        problems.append(f"data.source = {files!r}: each split needs one file path")
    if problems:
        cfg.source = None  # checked no further
        return problems
    cfg.source, cfg.splits = files["train"], dict(files)
    return []


def semantic_problems(recipe: Recipe, schedule_runs: bool = True) -> list[str]:
    """Cross-field checks that need no model: names, ratios, data availability and test leakage; with
    ``schedule_runs``, a stop rule and a distillation teacher that the recipe's schedule needs and provides."""
    schedule = _stop_problems(recipe) + _distill_problems(recipe) if schedule_runs else []
    data = _data_problems(recipe)
    return (_name_problems(recipe) + _range_problems(recipe) + schedule + _choice_problems(recipe) + data
            + ([] if data else _corpus_problems(recipe)))


def _name_problems(recipe: Recipe) -> list[str]:
    """Plug-in names, checked against their registries (the folders' plug-ins)."""
    from trimllm.freezing import FREEZING
    from trimllm.methods import METHODS
    from trimllm.schedules import SCHEDULES
    from trimllm.scoring import SCORERS
    from trimllm.scoring.candidates import GRANULARITIES

    named = [("scoring.scorer", recipe.scoring.scorer, SCORERS), ("schedule.name", recipe.schedule.name, SCHEDULES),
             ("freeze.mode", recipe.freeze.mode, FREEZING), ("lora.method", recipe.lora.method, METHODS),
             *([("pruned.method", recipe.pruned.method, METHODS)] if recipe.pruned.method else [])]
    problems = [f"{key} {value!r} unknown.{did_you_mean(value, registry.names())} Available: {', '.join(registry.names())}"
                for key, value, registry in named if value not in registry]
    if recipe.scoring.granularity not in GRANULARITIES:
        problems.append(f"scoring.granularity must be one of {GRANULARITIES}")
    return problems + option_problems(recipe)


def _range_problems(recipe: Recipe) -> list[str]:
    """Each section's own values (its ``problems()``, next to its fields; an optional section only when it is on),
    then the global batch over the launch's processes."""
    from trimllm.distributed import world_size

    sections = [getattr(recipe, f.name) for f in dataclasses.fields(recipe)]
    problems = [p for section in sections if hasattr(section, "problems") for p in section.problems()]
    processes = world_size()
    if recipe.train.batch_size % processes:
        problems.append(f"train.batch_size = {recipe.train.batch_size} is the global batch and must be divisible by "
                        f"the {processes} processes of this launch")
    return problems


def _stop_problems(recipe: Recipe) -> list[str]:
    """A schedule that removes needs a stop rule; one that removes everything at once, a target fraction (its facts,
    :class:`trimllm.schedules.ScheduleFacts`). A schedule that removes at stage 0 (oneshot) is told only the second."""
    from trimllm.schedules import SCHEDULES, schedule_facts

    if recipe.schedule.name not in SCHEDULES:
        return []  # named in _name_problems
    facts, cfg = schedule_facts(recipe.schedule.name), recipe.stop
    problems = []
    if facts.removes and facts.full_depth_stage0 and all(
            rule is None for rule in (cfg.target_fraction, cfg.target_params_fraction, cfg.max_modules,
                                      cfg.accuracy_floor, cfg.max_drop)):
        problems.append("no stop rule: set stop.target_fraction, stop.target_params_fraction, stop.max_modules, "
                        "stop.accuracy_floor or stop.max_drop")
    if facts.needs_target_fraction and cfg.target_fraction is None:
        problems.append(f"schedule {recipe.schedule.name} needs stop.target_fraction")
    return problems


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _choice_problems(recipe: Recipe) -> list[str]:
    """Names checked against what will use them: dtypes, transformers' schedulers and optimizers, lm-eval tasks,
    files that must exist."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from trimllm.evaluation import resolve_tasks

    problems = []
    for key, value, choices in [("model.dtype", recipe.model.dtype, DTYPES), ("export.dtype", recipe.export.dtype, DTYPES),
                                ("export.stages", recipe.export.stages, ["all", "final"]),
                                ("train.lr_scheduler", recipe.train.lr_scheduler, [x.value for x in SchedulerType]),
                                ("train.optim", recipe.train.optim, ["auto", *(x.value for x in OptimizerNames)])]:
        if value not in choices:
            problems.append(f"{key} {value!r} unknown.{did_you_mean(value, choices)} Available: {', '.join(choices)}")
    own = _own_task_name(recipe)
    for name in recipe.eval.tasks:
        if name == own:
            continue  # the user data set's task, written into the run folder's tasks/ when the run starts
        try:
            resolve_tasks([name])
        except ValueError as err:
            problems.append(f"eval.tasks: {err}")
    problems += _report_to_problems(recipe.train.report_to)
    if recipe.train.deepspeed and not Path(recipe.train.deepspeed).is_file():
        problems.append(f"train.deepspeed: file {recipe.train.deepspeed} not found (a DeepSpeed JSON config)")
    name = recipe.model.name
    if _looks_like_path(name) and not Path(name).expanduser().exists():
        problems.append(f"model.name: {name} not found (a local model folder or .gguf file)")
    return problems


def _own_task_name(recipe: Recipe) -> str | None:
    from trimllm.user_data import task_name

    return task_name(recipe.data) if recipe.data.source else None


def _report_to_problems(report_to: str | list[str]) -> list[str]:
    """Tracker names as transformers knows them, each installed (transformers fails late, inside the Trainer)."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = [report_to] if isinstance(report_to, str) else report_to
    if names in (["none"], ["all"], []):
        return []
    installed = get_available_reporting_integrations()
    problems = []
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            problems.append(f"train.report_to {name!r} unknown.{did_you_mean(name, INTEGRATION_TO_CALLBACK)} "
                            f"Available: none, all, {', '.join(INTEGRATION_TO_CALLBACK)}")
        elif name not in installed:
            extra = "pip install 'trimllm[tensorboard]'" if name == "tensorboard" else f"install {name}"
            problems.append(f"train.report_to {name!r}: its package is not installed ({extra})")
    return problems


def _looks_like_path(name: str) -> bool:
    """A model spec that can only be a local path: hub ids are ``org/name``, never absolute or relative."""
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or name.count("/") > 1


def _distill_problems(recipe: Recipe) -> list[str]:
    """A distillation teacher the schedule can provide (a check across sections)."""
    from trimllm.schedules import SCHEDULES, schedule_facts

    cfg, name = recipe.distill, recipe.schedule.name
    if name not in SCHEDULES or cfg is None:
        return []  # an unknown schedule is named in _name_problems
    if cfg.teacher != "stage0" or schedule_facts(name).full_depth_stage0:
        return []  # the section's own values are checked with the section (config.DistillConfig.problems)
    return [f"distill.teacher = stage0 needs a full-depth stage 0, which schedule {name!r} does not train; set "
            "distill.teacher to a model path or spec (e.g. another run's final/) or base"]


def _data_problems(recipe: Recipe) -> list[str]:
    """The data set exists, has a prompt and a train side large enough for the sizes asked (no test item used)."""
    from trimllm.data import DataFormatError, DataNotFoundError, get_spec, load_side
    from trimllm.prompts import supported

    if recipe.data.source is not None and not str(recipe.data.source).strip():
        return ["data.source is empty (an unset $VARIABLE?): give your data file or folder, or remove data.source "
                "to train on the bundled data.task"]
    if recipe.data.source is not None:
        from trimllm.user_data_checks import user_data_problems

        return user_data_problems(recipe)
    from trimllm.user_data_checks import own_data_keys_given

    ignored = own_data_keys_given(recipe.data)
    if ignored:
        return [f"data.{', data.'.join(ignored)} given without data.source: they describe your own data set and "
                f"would be ignored (the bundled data.task {recipe.data.task!r} would be trained on). Set data.source "
                "to your data file, or remove them"]
    task = recipe.data.task
    try:
        get_spec(task)
    except ValueError as err:
        return [f"data.task: {err}"]
    if task not in supported():
        return [f"data.task {task!r} has no prompt format; use one of {', '.join(supported())}"]
    try:
        train_side = len(load_side(task, "train"))
    except (DataNotFoundError, DataFormatError) as err:
        return [f"data.task: {err}"]
    if train_side == 0:
        return [f"data.task {task!r} has no train side (it is evaluation only): training, validation and "
                "calibration would have to use its test items"]
    needed = recipe.data.n_validation + recipe.data.n_calibration + (recipe.data.n_train or 1)
    if needed > train_side:
        return [f"data: n_validation + n_calibration + n_train = {needed} exceeds the {train_side} train-side "
                f"records of {task}; lower them (test items are never used)"]
    return []


def _corpus_problems(recipe: Recipe) -> list[str]:
    """``distill.corpus`` names a text field of the records that the run does not train on, and some remain."""
    from trimllm.formats import unused_records

    cfg = recipe.distill
    if cfg is None or not cfg.corpus:
        return []
    unused = unused_records(recipe.data)
    if not unused:
        return [f"distill.corpus = {cfg.corpus!r} distils the text of train-side records that the run does not train "
                f"on, but data.n_train = {recipe.data.n_train} leaves none: set data.n_train lower"]
    if not any(isinstance(r.get(cfg.corpus), str) for r in unused[-cfg.corpus_n:]):
        fields = ", ".join(k for k in unused[-1] if not k.startswith("_"))
        return [f"distill.corpus = {cfg.corpus!r}: the records it would read have no text field of that name "
                f"(their fields: {fields}); name one that holds domain text (sciq: support)"]
    return []


def score_option_problems(names: list[str], data: str, granularity: str, proxy: str, proxy_k: int | None,
                    proxy_fraction: float) -> list[str]:
    """Every problem with `trimllm score`'s options at once, before the model loads."""
    from trimllm.data import get_spec
    from trimllm.prompts import supported
    from trimllm.scoring import SCORERS
    from trimllm.scoring.candidates import GRANULARITIES

    problems = []
    if not 0 < proxy_fraction <= 1:
        problems.append(f"--proxy-fraction must be in (0, 1], got {proxy_fraction}")
    for name in names + ([proxy] if proxy_k else []):
        try:
            SCORERS.get(name)
        except ValueError as err:
            problems.append(str(err))
    if granularity not in GRANULARITIES:
        problems.append(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    try:
        get_spec(data)
        if data not in supported():
            problems.append(f"--data {data!r} has no multiple-choice prompt; use one of {', '.join(supported())}")
    except ValueError as err:
        problems.append(str(err))
    return problems


def target_module_problems(model, targets: str | list[str]) -> list[str]:
    """``lora.target_modules`` against the loaded model: each name must end a linear module's name (as peft
    matches them); ``all-linear`` always fits."""
    from torch import nn

    if isinstance(targets, str):
        return [] if targets == "all-linear" else target_module_problems(model, [targets])
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    return [f"lora.target_modules: {name!r} names no linear module of this model.{did_you_mean(name, linear)} "
            f"Linear modules: {', '.join(sorted(linear))} (or all-linear)" for name in targets if name not in linear]
