"""The Python entry points for scripts: :func:`train` runs a recipe as ``trimllm train`` does, :func:`compress`
as ``trimllm compress`` does; evaluation is :func:`trimllm.evaluation.evaluate` (``trimllm.evaluate``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trimllm.config import Recipe
from trimllm.validation import load_recipe


def train(recipe: str | Path | Recipe | None = None, *, overwrite: bool = False, **overrides) -> dict:
    """Run a recipe; returns the run's result (the content of ``output_dir/run.json``).

    Args:
        recipe: a recipe YAML path, a :class:`trimllm.config.Recipe`, or None (the defaults).
        overwrite: start over in an ``output_dir`` that holds another recipe's run (as ``--overwrite``).
        overrides: sections as mappings (``data={"source": "reviews.jsonl", "format": "multiple_choice"}``) or
            dotted keys (``**{"train.lr": 1e-4}``); they take precedence over the recipe, as ``key=value`` on the
            command line does, and are validated the same way.

    Raises:
        TypeError: ``recipe`` is not a path, a Recipe or None; ``overwrite`` is not a bool.
        trimllm.errors.RecipeError: the recipe, with the overrides, has problems (all listed).
    """
    from trimllm.pipeline import run

    _check_types(recipe, overwrite)
    return run(_resolved(recipe, overrides), overwrite=overwrite)


def compress(recipe: str | Path | Recipe | None = None, tolerance: float = 1.0, *, overwrite: bool = False,
             **overrides) -> dict:
    """The deepest cut within ``tolerance`` points, verified and proven (``trimllm compress``; README "Compress");
    returns the job's record (``output_dir/compress.json``). Arguments as :func:`train`'s.

    Raises:
        trimllm.deploy_proof.DeployProofFailed: the chosen model does not reload or run as measured.
    """
    from trimllm.compression import compress as run_compress

    _check_types(recipe, overwrite, "compress")
    return run_compress(_resolved(recipe, overrides, job="compress"), tolerance, overwrite=overwrite)


def _resolved(recipe, overrides: dict, job: str = "train") -> Recipe:
    base = _dotted(recipe.to_dict()) if isinstance(recipe, Recipe) else {}
    values = {key: os.fspath(v) if isinstance(v, os.PathLike) else v for key, v in {**base, **_dotted(overrides)}.items()}
    # JSON is YAML: each value reads back as the same Python value through the recipe's override parser. Unicode is
    # written as itself: an escaped emoji (a surrogate pair) would read back from YAML as two lone surrogates.
    pairs = [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in values.items()]
    return load_recipe(None if isinstance(recipe, Recipe) else recipe, pairs, job)


def _check_types(recipe, overwrite, name: str = "train") -> None:
    # `overwrite="no"` is truthy: it would delete a finished run. The API says what it takes instead.
    if not isinstance(overwrite, bool):
        raise TypeError(f"trimllm.{name}(overwrite=...) takes True or False, got {type(overwrite).__name__} "
                        f"{overwrite!r}")
    if recipe is not None and not isinstance(recipe, (str, os.PathLike, Recipe)):
        raise TypeError(f"trimllm.{name}(recipe) takes a recipe YAML path (str or os.PathLike), a "
                        f"trimllm.config.Recipe or None (the defaults), got {type(recipe).__name__} {recipe!r}")


def _dotted(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in ("splits", "fsdp_config"):  # mappings that are values themselves
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
