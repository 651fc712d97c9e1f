"""The Python entry points for scripts: :func:`train` runs a recipe as ``trimllm train`` does; evaluation is
:func:`trimllm.evaluation.evaluate` (``trimllm.evaluate``)."""

from __future__ import annotations

import json
from pathlib import Path

from trimllm.config import Recipe, load_recipe


def train(recipe: str | Path | Recipe | None = None, *, overwrite: bool = False, **overrides) -> dict:
    """Run a recipe; returns the run's result (the content of ``output_dir/run.json``).

    Args:
        recipe: a recipe YAML path, a :class:`trimllm.config.Recipe`, or None (the defaults).
        overwrite: start over in an ``output_dir`` that holds another recipe's run (as ``--overwrite``).
        overrides: sections as mappings (``data={"source": "reviews.jsonl", "format": "multiple_choice"}``) or
            dotted keys (``**{"train.lr": 1e-4}``); they take precedence over the recipe, as ``key=value`` on the
            command line does, and are validated the same way.

    Raises:
        trimllm.config.RecipeError: the recipe, with the overrides, has problems (all listed).
    """
    from trimllm.pipeline import run

    base = _dotted(recipe.to_dict()) if isinstance(recipe, Recipe) else {}
    values = {**base, **_dotted(overrides)}
    # JSON is YAML: each value reads back as the same Python value through the recipe's override parser.
    pairs = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    return run(load_recipe(None if isinstance(recipe, Recipe) else recipe, pairs), overwrite=overwrite)


def _dotted(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in ("splits", "fsdp_config"):  # mappings that are values themselves
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
