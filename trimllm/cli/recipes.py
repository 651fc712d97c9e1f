"""The recipe commands: ``validate`` (every problem at once, no model loaded) and ``train`` (run or resume)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from trimllm.cli.common import app, plugin_help

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML, e.g. recipes/smoke.yaml.")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. train.lr=1e-4 output_dir=/tmp/run.")]


def _recipe_or_exit(recipe: Path, overrides: list[str] | None):
    from trimllm.config import RecipeError
    from trimllm.validation import load_recipe

    try:
        return load_recipe(recipe, overrides or [])
    except RecipeError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


@app.command()
def validate(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Check a recipe (all problems at once) without loading a model."""
    from trimllm.config import to_yaml

    resolved = _recipe_or_exit(recipe, overrides)
    typer.echo(to_yaml(resolved))
    typer.echo(f"{recipe}: OK")


@app.command(epilog=plugin_help())
def train(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    overwrite: Annotated[bool, typer.Option(help="Start afresh: replace output_dir if it holds a trimllm run (never a "
                                                   "folder with other files); without it, a run of the same recipe "
                                                   "there resumes.")] = False,
) -> None:
    """Progressive layer-dropping fine-tuning: score, drop, train (LoRA) and export, stage by stage.

    Rerunning the same command on the same output_dir resumes the run where it stopped (completed stages are kept,
    the running stage continues from its last Trainer checkpoint); a different recipe there is refused."""
    from trimllm.config import to_yaml
    from trimllm.distributed import is_main
    from trimllm.pipeline import run

    resolved = _recipe_or_exit(recipe, overrides)
    if is_main():
        typer.echo(to_yaml(resolved))
    from trimllm.outputs import OutputError
    from trimllm.report import run_summary

    started = time.perf_counter()
    try:
        plan = run(resolved, overwrite=overwrite)
    except (FileExistsError, OutputError) as err:
        raise typer.BadParameter(str(err), param_hint="output_dir") from None
    except KeyboardInterrupt:
        if is_main():
            typer.echo(f"\nInterrupted. Completed stages and checkpoints are kept in {resolved.output_dir}: rerun the "
                       "same command to resume.", err=True)
        raise typer.Exit(130) from None
    if is_main():
        typer.echo(run_summary(plan, resolved.output_dir, time.perf_counter() - started))
