"""lm-eval glue: run trimllm's task definitions (``eval/tasks``) on an in-memory model and write the results.

Everything goes through lm-eval itself (``HFLM(pretrained=model)`` + ``TaskManager(include_path=...)``), so a
number from ``trimllm eval`` is the number plain ``lm_eval --include_path eval/tasks`` prints for the same model.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import yaml
from torch import nn

from trimllm.plan import count_parameters
from trimllm.prompts import PREFIX, TASKS_DIR
from trimllm.registry import did_you_mean

logger = logging.getLogger(__name__)

DOMAINS = ("science", "medical", "finance", "legal", "general")


def task_groups() -> dict[str, list[str]]:
    """``{group: [task, ...]}`` read from the group YAMLs in ``eval/tasks``."""
    if not TASKS_DIR.is_dir():
        raise FileNotFoundError(
            f"lm-eval task directory {TASKS_DIR} not found; trimllm's tasks ship in the repository's eval/tasks "
            "(install trimllm from a checkout with `make setup`)."
        )
    groups = {}
    for domain in DOMAINS:
        config = yaml.safe_load((TASKS_DIR / f"{PREFIX}{domain}.yaml").read_text())
        groups[config["group"]] = list(config["task"])
    return groups


class _Notices(logging.Filter):
    """lm-eval messages a trimllm user can do nothing about: that ``pretrained`` is a model object rather than a
    name (twice; it is how trimllm evaluates a model in memory), and a hint about ``--metadata`` for every task
    with a custom loader."""

    NOTICES = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model through",
               "Custom kwargs can be passed to `--metadata`")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in self.NOTICES)


def _quiet_notices() -> None:
    for name in ("lm_eval.models.huggingface", "lm_eval.api.task"):
        lm_eval_logger = logging.getLogger(name)
        if not any(isinstance(f, _Notices) for f in lm_eval_logger.filters):
            lm_eval_logger.addFilter(_Notices())


def include_tasks(include_path: str | Path | None) -> set[str]:
    """Names of the tasks whose YAMLs are in ``include_path`` (e.g. a run's ``tasks/``, where trimllm writes the
    user data set's task)."""
    return set(include_configs(include_path))


def include_configs(include_path: str | Path | None) -> dict[str, tuple[Path, dict]]:
    """``{task: (YAML, config)}`` of ``include_path``, read as lm-eval reads them (``!function`` tags unresolved).

    Raises:
        ValueError: a YAML there does not parse (lm-eval would fail on it after the model loads).
    """
    if include_path is None or not Path(include_path).is_dir():
        return {}
    from lm_eval.tasks._yaml_loader import load_yaml

    found = {}
    for path in sorted(Path(include_path).glob("*.yaml")):
        try:
            config = load_yaml(path, resolve_func=False)
        except Exception as err:  # noqa: BLE001 (yaml and lm-eval raise several types; the file is what matters)
            detail = str(err).strip().splitlines()
            raise ValueError(f"--include-path: {path} is not a valid task YAML ({type(err).__name__}: "
                             f"{' '.join(detail[:3])}); fix or remove it") from None
        if isinstance(config, dict) and isinstance(config.get("task"), str):
            found[config["task"]] = (path, config)
    return found


def missing_data_files(config: dict) -> list[str]:
    """The local ``dataset_kwargs.data_files`` of a task config that do not exist (e.g. a run folder moved since
    trimllm wrote its task with an absolute path)."""
    files = (config.get("dataset_kwargs") or {}).get("data_files") or []
    values = files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else files
    flat = [v for value in values for v in ([value] if isinstance(value, str) else value)]
    return [f for f in flat if "://" not in f and not Path(f).exists()]


def resolve_tasks(names: list[str], include_path: str | Path | None = None) -> list[str]:
    """Map user task names to lm-eval names: ``sciq`` -> ``trimllm_sciq``, ``science`` -> ``trimllm_science``;
    a task of ``include_path`` by its own name.

    Raises:
        ValueError: a name matches no task or group; the message suggests the closest one.
    """
    groups = task_groups()
    included = include_configs(include_path)
    known = set(groups) | {task for tasks in groups.values() for task in tasks} | set(included)
    resolved = []
    for name in names:
        for candidate in (name, PREFIX + name):
            if candidate in known:
                resolved.append(candidate)
                break
        else:
            short = sorted({k.removeprefix(PREFIX) for k in known})
            raise ValueError(
                f"Unknown task or group {name!r}.{did_you_mean(name.removeprefix(PREFIX), short)} "
                f"See `trimllm eval --list`."
            )
    for name in resolved:
        missing = missing_data_files(included[name][1]) if name in included else []
        if missing:
            raise ValueError(f"task {name!r} ({included[name][0]}) reads {missing[0]}, which does not exist (was the "
                             "run folder moved? trimllm writes the task's data path in full): point its "
                             "dataset_kwargs.data_files at the file, or rerun the run's `trimllm train` command")
    return resolved


def evaluate(
    model,
    tokenizer,
    tasks: list[str],
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    log_samples: bool = False,
    include_path: str | Path | None = None,
) -> dict:
    """Evaluate an in-memory model on trimllm tasks or groups with lm-eval.

    Args:
        model: a ``*ForCausalLM`` (a compressed one included), or an lm-eval ``LM`` that runs the model itself
            (:class:`trimllm.llamacpp.LlamaCppLM`: a GGUF in llama.cpp).
        tokenizer: its tokenizer (None with an lm-eval ``LM``).
        tasks: task or group names (short names such as ``sciq`` or ``general`` are accepted).
        limit: at most this many test documents per task (lm-eval's ``--limit``).
        batch_size: lm-eval batch size.
        num_fewshot: few-shot examples, drawn from the train side (default: the task's, zero).
        log_samples: keep per-document records in ``results["samples"]``.
        include_path: a folder of further task YAMLs (a run's ``tasks/``: the user data set's task).

    Returns:
        lm-eval's results dictionary.
    """
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = resolve_tasks(tasks, include_path)
    _quiet_notices()
    if isinstance(model, LM):
        lm = model
    else:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    extra = [str(include_path)] if include_path is not None and Path(include_path).is_dir() else []
    manager = TaskManager(include_path=[str(TASKS_DIR), *extra], include_defaults=False)
    return simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=log_samples,
        bootstrap_iters=1000,
    )


def results_table(results: dict, model: nn.Module | None = None) -> str:
    """Markdown: acc / acc_norm / stderr per task, the mean per domain, and the model's size."""
    lines = []
    if model is not None:
        from trimllm.surgery import get_plan

        plan = get_plan(model)
        lines += [
            f"Model: `{plan.base_model}`, {len(plan.kept)} of {plan.num_layers} blocks, "
            f"{count_parameters(model):,} parameters.",
            "",
        ]
    lines += ["| task | acc | ± | acc_norm | ± | n |", "|---|---|---|---|---|---|"]
    per_task = {k: v for k, v in results["results"].items() if k not in results.get("groups", {})}
    for task, metrics in sorted(per_task.items()):
        n = results.get("n-samples", {}).get(task, {}).get("effective", "")
        lines.append(
            f"| {task.removeprefix(PREFIX)} | {_fmt(metrics.get('acc,none'))} | {_fmt(metrics.get('acc_stderr,none'))} "
            f"| {_fmt(metrics.get('acc_norm,none'))} | {_fmt(metrics.get('acc_norm_stderr,none'))} | {n} |"
        )
    other = [(task, name.split(",")[0], value, metrics.get(name.replace(",", "_stderr,")))
             for task, metrics in sorted(per_task.items()) for name, value in metrics.items()
             if ("perplexity" in name or "bits_per_byte" in name) and "_stderr" not in name]
    if other:  # a completion / text task of your own data: lm-eval's perplexity metrics
        lines += ["", "| task | metric | value | ± |", "|---|---|---|---|"]
        lines += [f"| {t.removeprefix(PREFIX)} | {m} | {_fmt(v)} | {_fmt(e)} |" for t, m, v, e in other]
    domain_means = domain_scores(results)
    if domain_means:
        lines += ["", "| domain | mean acc | tasks |", "|---|---|---|"]
        for domain, (mean, count) in domain_means.items():
            lines.append(f"| {domain} | {_fmt(mean)} | {count} |")
    return "\n".join(lines) + "\n"


def domain_scores(results: dict) -> dict[str, tuple[float, int]]:
    """Unweighted mean acc of the tasks of each domain present in ``results`` (``{domain: (mean, n_tasks)}``)."""
    scores = {}
    for group, tasks in task_groups().items():
        values = [results["results"][t]["acc,none"] for t in tasks if t in results["results"]]
        if values:
            scores[group.removeprefix(PREFIX)] = (sum(values) / len(values), len(values))
    return scores


def write_results(results: dict, out_dir: str | Path, model: nn.Module | None = None) -> Path:
    """Write ``results.json`` (lm-eval's format), ``samples_<task>.jsonl`` and ``results.md`` to ``out_dir``."""
    from lm_eval.utils import handle_non_serializable

    from trimllm.atomic import write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = results.get("samples") or {}
    summary = {k: v for k, v in results.items() if k != "samples"}
    write_text_atomic(out_dir / "results.json", json.dumps(summary, indent=2, default=handle_non_serializable))
    for task, records in samples.items():
        text = "".join(json.dumps(r, default=handle_non_serializable) + "\n" for r in records)
        write_text_atomic(out_dir / f"samples_{task}.jsonl", text)
    write_text_atomic(out_dir / "results.md", results_table(results, model))
    if (out_dir / "config.json").is_file() and (out_dir / "README.md").is_file():  # a model folder: its card too
        from trimllm.export import add_results_to_card

        add_results_to_card(out_dir, results_table(results, model))
    return out_dir


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "N/A":
        return "–"
    return f"{value:.4f}"
