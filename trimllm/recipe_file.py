"""Reading a recipe: its YAML file (safe, refusing duplicate keys), the ``key=value`` overrides of a command line, the
v0.2 spelling of keys that have moved (read at their new place with one line naming it; a value v0.2 wrote for "not
set" left out, so the plug-in's default applies as it did; a v0.2 run folder's resolved.yaml read the same way,
silently, to decide whether the run resumes), and the typing into :mod:`trimllm.config`'s dataclasses with every problem of
its shape (unknown keys with "did you mean", wrong types). The checks of its values are
:func:`trimllm.validation.load_recipe`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path

import yaml

from trimllm.config import Recipe, ScheduleConfig, ScoringConfig
from trimllm.errors import RecipeError
from trimllm.registry import did_you_mean

logger = logging.getLogger(__name__)


class _StrictLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing duplicate keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    """A recipe file as a mapping; a syntax error or a duplicate key is a RecipeError naming file, line, column."""
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError([f"{where}: not valid YAML: {problem}"], str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError([f"cannot read {path}: {err}"], str(path)) from None
    if raw is not None and not isinstance(raw, dict):
        raise RecipeError([f"{path} must hold a mapping of sections (model:, data:, ...), got {type(raw).__name__}"],
                          str(path))
    return raw or {}


# Keys of the v0.2 spelling -> their place now (upgrade() moves them in a file; an override in the former spelling
# is set at its new key), each with one line that names the new spelling. v0.3 put each plug-in's options under
# its key and the pruned model's overrides in one ``pruned:`` block.
MOVED = {
    "schedule.per_stage": "schedule.options.per_stage",
    "scoring.order": "schedule.options.order",
    "scoring.proxy_k": "scoring.options.proxy_k",
    "scoring.proxy": "scoring.options.proxy",
    "scoring.proxy_fraction": "scoring.options.proxy_fraction",
    "scoring.angular_n": "scoring.options.n",
    "lora.pruned_r": "pruned.r",
    "lora.pruned_alpha": "pruned.alpha",
    "train.pruned_lr": "pruned.lr",
}


def moved(old: str, value) -> str:
    """The line that says where a v0.2 key now lives (logged as a warning where it is read)."""
    line = f"recipe: {old} is now {MOVED[old]} (read as {MOVED[old]}={value!r}; write it so and this line goes)"
    logger.warning(line)
    return line


# Sections that were switched by an ``enabled`` flag until v0.3 and are now off when null, on when a mapping (as
# ``bridge``): the flag is read once more, with a line that names the new spelling.
SWITCHED = ("distill", "pld")


def switch(raw: dict, section: str, on, saved: bool = False) -> str | None:
    """Turn ``raw``'s optional ``section`` on (a mapping: the one given, else its defaults) or off (null) as a
    former ``section.enabled`` said; the line that says so (logged), none for a saved run's recipe."""
    node = raw.get(section)
    raw[section] = (node if isinstance(node, dict) else {}) if on else None
    if saved:
        return None
    line = (f"recipe: {section}.enabled is gone: {section}: null is off, a {section}: mapping is on (read as "
            f"{section}: {'{...}' if on else 'null'}; write it so and this line goes)")
    logger.warning(line)
    return line


# A plug-in section may be spelled by its plug-in's name alone: ``schedule: oneshot`` (or ``schedule=oneshot`` on
# the command line) is ``schedule: {name: oneshot}``, the schedule with its own defaults.
SHORTHAND = {"schedule": "name"}


def _expand(raw: dict) -> dict:
    for section, field_name in SHORTHAND.items():
        if isinstance(raw.get(section), str):
            raw[section] = {field_name: raw[section]}
    return raw


def _set_dotted(raw: dict, key: str, value) -> None:
    """Set ``a.b.c`` in ``raw``; a later override of a section replaces what an earlier one or the file set."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    _expand(raw)


def _build(cls, raw, prefix: str, problems: list[str]):
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'recipe'} must be a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            problems.append(f"unknown key {prefix}{key}.{did_you_mean(key, names)} Known: {', '.join(sorted(names))}")
            continue
        hint, section = hints[key], _optional_section(hints[key])
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.", problems)
        elif section is not None:  # a section that is off when null (bridge: null), on with its settings
            kwargs[key] = None if value is None else _build(section, value, f"{prefix}{key}.", problems)
        elif _type_ok(value, hint):
            kwargs[key] = float(value) if hint in (float, float | None) and isinstance(value, int) else value
        elif isinstance(value, str) and _type_ok(_number(value), hint):
            # YAML 1.1 reads 1e-4 (no dot) as a string; accept it where a number is expected.
            kwargs[key] = _number(value)
        else:
            problems.append(f"{prefix}{key} = {value!r} should be {_type_name(hint)}")
    return cls(**kwargs)


def _optional_section(hint):
    """``X`` for a hint ``X | None`` where ``X`` is a section (a dataclass), else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def read_recipe(path: str | Path | None, overrides: list[str] = ()) -> tuple[dict, list[str], str]:
    """Read a YAML recipe, bring its mapping to the current spelling (:func:`upgrade`) and apply ``key=value``
    overrides (a v0.2 key: at its new place): (the mapping, the problems of the overrides, the source's
    name). A missing or unreadable file raises :class:`RecipeError`. :func:`build_recipe` types it; the checks of its
    values are :func:`trimllm.validation.load_recipe`'s."""
    raw: dict = {}
    source = "recipe"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise RecipeError([f"recipe file {path} not found"], source)
        raw = _expand(read_yaml(Path(path)))
    upgrade(raw)
    problems: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            problems.append(f"override {item!r} is not key=value (e.g. train.lr=1e-4)")
            continue
        key = key.strip()
        try:
            value = yaml.safe_load(value)
            if key.endswith(".enabled") and key.split(".")[0] in SWITCHED:  # v0.3's flag of an optional section
                switch(raw, key.split(".")[0], value)
                continue
            if key in MOVED:  # a v0.2 key: set at its new place, saying so
                moved(key, value)
                key = MOVED[key]
            _set_dotted(raw, key, value)
        except yaml.YAMLError:
            problems.append(f"override {item!r}: the value is not valid YAML (quote it, e.g. {key}='{value}')")
    return raw, problems, source


def build_recipe(raw: dict, problems: list[str]) -> Recipe:
    """The typed recipe of a mapping; the problems of its shape (unknown keys with "did you mean", wrong types) are
    added to ``problems``."""
    return _build(Recipe, raw, "", problems)


# What v0.2 wrote for a key left unset (its default; resolved.yaml spelled every key), and so means "not set".
V02_UNSET = {
    "schedule.per_stage": 1, "scoring.order": None, "scoring.proxy_k": None, "scoring.proxy": "block_influence",
    "scoring.proxy_fraction": 0.25, "scoring.angular_n": 1, "lora.pruned_r": None, "lora.pruned_alpha": None,
    "train.pruned_lr": None,
}


def upgrade(raw: dict, saved: bool = False) -> list[str]:
    """Move ``raw``'s (a recipe file's mapping) v0.2 keys to their current place, in place; the lines that say so,
    logged (none for ``saved``, a run folder's resolved.yaml, which is also forgiven options its plug-in does
    not take: it was valid when it ran)."""
    notices = []
    for section in SWITCHED:
        node = raw.get(section)
        if isinstance(node, dict) and "enabled" in node:
            notices += [line for line in [switch(raw, section, node.pop("enabled"), saved)] if line]
    for old, new in MOVED.items():
        section, key = old.split(".")
        node = raw.get(section)
        if not isinstance(node, dict) or key not in node:
            continue
        value = node.pop(key)
        if not saved:
            notices.append(moved(old, value))
        if value == V02_UNSET[old] or (old == "scoring.order" and value == "rescore" and not _takes_order(raw)):
            continue  # v0.2's "not set" (it wrote rescore for the schedules without an order): the default applies
        *path, leaf = new.split(".")
        target = raw
        for part in path:
            target = target.setdefault(part, {}) if isinstance(target.get(part, {}), dict) else {}
        target.setdefault(leaf, value)  # the new spelling, where both are given, wins
    if saved:
        _forgive(raw)
    return notices


def _takes_order(raw: dict) -> bool:
    from trimllm.schedules import SCHEDULES

    name = (raw.get("schedule") or {}).get("name", ScheduleConfig.name)
    return name in SCHEDULES and "order" in SCHEDULES.options(name)


def _forgive(raw: dict) -> None:
    """Drop the moved options that a saved run's plug-ins do not take (v0.2 ignored them): the schedule's, and the
    scorer's that scored (the schedule's own where it declares one, as TrimLLM's scan)."""
    from trimllm.plugin_options import scorer_of
    from trimllm.schedules import SCHEDULES
    from trimllm.scoring import SCORERS

    schedule, scoring = raw.get("schedule") or {}, raw.get("scoring") or {}
    name = schedule.get("name", ScheduleConfig.name)
    for node, plugin, registry in ((schedule, name, SCHEDULES),
                                   (scoring, scorer_of(name, scoring.get("scorer", ScoringConfig.scorer)), SCORERS)):
        options = node.get("options")
        if isinstance(options, dict) and plugin in registry:
            node["options"] = {k: v for k, v in options.items() if k in registry.options(plugin)}
