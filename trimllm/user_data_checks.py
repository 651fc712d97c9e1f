"""A recipe's own data set (``data.source``) checked before any model loads: keys that fit the format, a source that
parses, sides that do not overlap, and every record of every side through the templates — first in Jinja's sandbox
(:mod:`trimllm.templates`), then through lm-eval's own task object — with gold among the choices. Called by
:mod:`trimllm.validation`."""

from __future__ import annotations

import re


def own_data_keys_given(cfg) -> list[str]:
    """The keys of ``cfg`` (a :class:`trimllm.config.DataConfig`) that matter only with ``data.source`` and differ
    from their defaults."""
    own = ("name", "format", "doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter", "text_field",
           "process_docs", "splits", "test_fraction")
    default = type(cfg)()
    return [key for key in own if getattr(cfg, key) != getattr(default, key)]


def user_data_problems(recipe) -> list[str]:
    """A user data set (``data.source``): keys that fit the format, a source that parses, templates that are safe
    and render on every record of every side (naming the first that fails), gold among the choices, enough records."""
    from trimllm.data import DataFormatError, DataNotFoundError
    from trimllm.templates import check_templates
    from trimllm.user_data import FORMATS, user_sides

    cfg = recipe.data
    if cfg.format not in FORMATS:
        return [f"data.format = {cfg.format!r} must be one of {', '.join(FORMATS)}"]
    needed = {"multiple_choice": ("doc_to_text", "doc_to_choice", "doc_to_target"),
              "completion": ("doc_to_text", "doc_to_target"), "text": ("text_field",)}[cfg.format]
    problems = [f"data.{key} is required with data.format {cfg.format} (an lm-eval Jinja template over a record, "
                "e.g. \"{{question}}\")" for key in needed if getattr(cfg, key) in (None, "")]
    if cfg.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.name):
        problems.append(f"data.name = {cfg.name!r}: a task name of letters, digits, '_', '-' or '.' (it names the "
                        "lm-eval task and its files), e.g. my_reviews")
    if not 0 < cfg.test_fraction < 1:
        problems.append(f"data.test_fraction = {cfg.test_fraction} must be in (0, 1)")
    if cfg.format != "multiple_choice" and "task_accuracy" in (recipe.scoring.scorer, recipe.scoring.options.get("proxy")):
        problems.append(f"scoring.scorer task_accuracy needs multiple-choice data (data.format is {cfg.format}); use "
                        "block_influence, calibration_loss or another scorer")
    if problems:
        return problems
    try:
        sides = user_sides(cfg)
    except (DataNotFoundError, DataFormatError) as err:
        return [str(err)]
    drawn_validation = cfg.n_validation if sides.validation is None else 0  # else the user's validation split
    needed_records = drawn_validation + cfg.n_calibration + (cfg.n_train or 1)
    if needed_records > len(sides.train):
        problems.append(f"data: {needed_records} train-side records needed (n_validation + n_calibration + n_train), "
                        f"{len(sides.train)} in {cfg.source}; lower the sizes or give more records")
    if not sides.test:
        problems.append(f"data: the test side of {cfg.source} is empty; raise data.test_fraction or give data.splits.test")
    try:
        check_templates(cfg)  # before any template is rendered by lm-eval
    except DataFormatError as err:
        return [*problems, str(err)]
    named = [("train", sides.train), ("test", sides.test), ("validation", sides.validation or ())]
    for side, records in named:  # every record a run may use: a bad one found after the model loads costs more
        problem = _template_problem(cfg, list(records), side)
        if problem:
            return [*problems, problem]
    return problems


def _template_problem(cfg, records: list[dict], side: str) -> str | None:
    """The first of ``records`` whose templates read a missing or null field, are refused by the sandbox, fail to
    render in lm-eval, or give a gold that is not among its choices."""
    from trimllm.formats import user_task
    from trimllm.templates import record_problem
    from trimllm.user_data import content

    if cfg.format == "text":
        bad = next((i for i, r in enumerate(records) if not isinstance(r.get(cfg.text_field), str)), None)
        return None if bad is None else (f"data.text_field {cfg.text_field!r}: {side} record {bad} has no text field "
                                         f"of that name (its fields: {', '.join(content(records[bad]))})")
    for index, record in enumerate(records):  # in Jinja's sandbox first: nothing below runs unchecked
        problem = record_problem(cfg, record, side, index)
        if problem:
            return problem
    if not records:
        return None
    try:
        task = user_task(cfg, records[:1])  # lm-eval's renderer, built once (it renders the first record already)
    except Exception as err:  # noqa: BLE001 (as below)
        return (f"data templates fail on {side} record 0 ({_plain(err, cfg)}); the record's fields are: "
                f"{', '.join(content(records[0]))}")
    for index, record in enumerate(records):
        try:
            task.doc_to_text(record)
            gold = task.doc_to_target(record)
            choices = task.doc_to_choice(record) if cfg.format == "multiple_choice" else None
            if choices is not None and not (isinstance(gold, int) and 0 <= gold < len(choices)) and gold not in choices:
                return (f"data.doc_to_target: {side} record {index} gives {gold!r}, which is not among its choices "
                        f"{choices} (nor an index of one)")
        except Exception as err:  # noqa: BLE001 (jinja and lm-eval raise many types; the user needs the record)
            fields = ", ".join(content(record))
            return (f"data templates fail on {side} record {index} ({_plain(err, cfg)}); the record's fields "
                    f"are: {fields}")
    return None


def _plain(err: Exception, cfg) -> str:
    """lm-eval's error in the user's terms: its literal_eval of a rendered ``doc_to_choice`` fails with
    ``malformed node or string: <ast.Name object at 0x…>``, and an index past the choices with a bare IndexError."""
    text = f"{type(err).__name__}: {err}"
    if "<ast." in text or "malformed node" in text or (isinstance(err, SyntaxError) and cfg.format == "multiple_choice"):
        return ("data.doc_to_choice must render a list of the choices, e.g. \"{{options}}\" for a list field or "
                "[\"negative\", \"positive\"]; it rendered text that is not a list")
    if isinstance(err, IndexError) and isinstance(cfg.doc_to_target, int | str):
        return f"IndexError: data.doc_to_target gives an index past the record's choices ({cfg.doc_to_target!r})"
    return text
