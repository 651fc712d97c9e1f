"""The recipe commands: ``validate`` (every problem at once, no model loaded) and ``train`` (run or resume)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from trimllm.cli.common import app, plugin_help

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML, e.g. recipes/smoke.yaml.")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. train.lr=1e-4 output_dir=/tmp/run.")]


def _recipe_or_exit(recipe: Path, overrides: list[str] | None, job: str = "train"):
    from trimllm.config import RecipeError
    from trimllm.validation import load_recipe

    try:
        return load_recipe(recipe, overrides or [], job)
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


@app.command(epilog=plugin_help())
def compress(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML (e.g. recipes/quickstart.yaml), or a model (packaged name or folder) to compress with the default recipe.")],
    overrides: OverridesArg = None,
    tolerance: Annotated[float | None, typer.Option(help="Points of the validation metric the compressed model may lose against the full-depth fine-tune, absolute (1.0 = one point of accuracy). Default: stop.max_drop, else 1.0.")] = None,
    metric: Annotated[str | None, typer.Option(help="The validation metric the tolerance is in: acc (multiple choice) or token_prob (completion, text); the data format's own.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Where the proof runs: llamacpp (GGUF, accuracy and speed) or transformers (reload only). Default: compress.runtime (llamacpp).")] = None,
    quant: Annotated[str | None, typer.Option(help="The GGUF type proven and timed beside f16: q8_0 or q4_k_m. Default: compress.quant (q4_k_m).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start afresh: replace output_dir if it holds a trimllm compress job (never a folder with other files).")] = False,
) -> None:
    """The deepest cut within a tolerance: fine-tune at full depth, estimate every depth (no training), probe a few
    with short healing, heal the deepest promising one, verify it on held-out data (a paired interval), back off if
    it misses, and prove the result in plain transformers and llama.cpp. Rerunning resumes; another tolerance on the
    same output_dir reuses what was measured."""
    path = Path(recipe)
    extra = list(overrides or [])
    if path.suffix not in (".yaml", ".yml"):  # a model: the default recipe on it, into runs/compress
        path, extra = None, [f"model.name={recipe}", "output_dir=runs/compress", *extra]
    resolved = _recipe_or_exit(path, extra, job="compress")
    compress_command(resolved, tolerance, metric, runtime, quant, overwrite)


def compress_command(recipe, tolerance: float | None, metric: str | None, runtime: str | None, quant: str | None,
                     overwrite: bool) -> None:
    """Check the options against the recipe (one message, exit 2, before any work), then run the job."""
    import dataclasses

    from trimllm.compression import compress
    from trimllm.config import CompressConfig
    from trimllm.formats import data_metric
    from trimllm.outputs import OutputError

    tolerance = tolerance if tolerance is not None else recipe.stop.max_drop or 1.0
    if not tolerance > 0:
        raise typer.BadParameter(f"the tolerance is the points the model may lose, > 0 (e.g. 1.0); got {tolerance}",
                                 param_hint="--tolerance")
    own = data_metric(recipe.data)  # from the format: no data is read here
    if metric is not None and metric != own:
        raise typer.BadParameter(f"{recipe.data.format} data is measured by {own}, not {metric!r}: the tolerance is in "
                                 f"points of {own}", param_hint="--metric")
    settings = recipe.compress or CompressConfig()
    settings = dataclasses.replace(settings, runtime=runtime or settings.runtime, quant=quant or settings.quant)
    if settings.runtime not in ("llamacpp", "transformers"):
        raise typer.BadParameter(f"expected llamacpp or transformers, got {settings.runtime!r}", param_hint="--runtime")
    if settings.quant not in ("q8_0", "q4_k_m"):
        raise typer.BadParameter(f"expected q8_0 or q4_k_m, got {settings.quant!r}", param_hint="--quant")
    if recipe.scoring.granularity != "block":
        raise typer.BadParameter("compress removes whole blocks; set scoring.granularity=block", param_hint="RECIPE")
    if settings.runtime == "llamacpp":
        from trimllm.gguf import check_tooling

        check_tooling()  # not installed: one message (exit 2) now, not after hours of training
    recipe.compress = settings
    from trimllm.deploy_proof import DeployProofFailed

    try:
        state = compress(recipe, tolerance, overwrite=overwrite)
    except (FileExistsError, OutputError) as err:
        raise typer.BadParameter(str(err), param_hint="output_dir") from None
    except DeployProofFailed as err:  # not bad input: the model does not deploy as measured (exit 1)
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1) from None
    choice, out = state["choice"], recipe.output_dir
    what = (f"{choice['removed']} of {choice['n_blocks']} blocks removed, verified within {tolerance} points"
            if choice["removed"] else f"no cut verified within {tolerance} points: final/ is the full-depth fine-tune")
    typer.echo(f"compress: {what}; model in {out}/final, report in {out}/compress.md")
