"""The model commands: ``info``, ``drop`` (remove blocks or halves and export), ``eval`` (lm-eval) and ``score``
(every block's contribution)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from trimllm.cli.common import (
    RUNTIMES,
    DtypeOpt,
    ModelArg,
    app,
    check_output,
    check_sizes,
    load_for_cli,
    parse_indices,
    scorer_names,
)


@app.command()
def info(model: ModelArg, dtype: DtypeOpt = "auto") -> None:
    """Print the model's family, blocks, parameters and per-block types."""
    from trimllm.summary import describe

    loaded, _ = load_for_cli(model, dtype)
    typer.echo(describe(loaded))


@app.command()
def drop(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="Directory for the exported model.")],
    blocks: Annotated[str | None, typer.Option(help="Whole blocks to remove (original indices), e.g. 3,13,14.")] = None,
    attention: Annotated[str | None, typer.Option(help="Blocks whose attention branch to bypass.")] = None,
    mlp: Annotated[str | None, typer.Option(help="Blocks whose MLP branch to bypass.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it holds an earlier trimllm output (never a folder "
                                                   "with other files).")] = False,
    dtype: DtypeOpt = "auto",
    bridge: Annotated[str | None, typer.Option(help="Fit a linear bridge at each cut of --blocks on this data (a bundled "
                                                    "task's train side, or a recipe .yaml's data) and fold it into "
                                                    "the block before the cut (ReplaceMe); no training.")] = None,
    bridge_samples: Annotated[int, typer.Option(help="Train-side texts to fit the bridge on (as many more, held out, "
                                                     "for the LM loss it reports).")] = 64,
    bridge_ridge: Annotated[float, typer.Option(help="Pull of the bridge toward identity (plain removal), relative "
                                                     "to the activations' scale.")] = 1e-2,
) -> None:
    """Remove blocks (or attention / MLP halves) and export a standard Hugging Face model."""
    block_ids = parse_indices(blocks, "--blocks")
    attn_ids = parse_indices(attention, "--attention")
    mlp_ids = parse_indices(mlp, "--mlp")
    if not (block_ids or attn_ids or mlp_ids):
        raise typer.BadParameter("nothing to remove: pass --blocks, --attention and/or --mlp", param_hint="--blocks")
    if bridge and not block_ids:
        raise typer.BadParameter("--bridge bridges the cuts of --blocks; pass --blocks", param_hint="--bridge")
    check_sizes([("--bridge-samples", bridge_samples, 1)])
    if not bridge_ridge > 0:
        raise typer.BadParameter(f"must be > 0, got {bridge_ridge}", param_hint="--bridge-ridge")
    check_output(out, overwrite, None, "--out")
    if bridge:
        _check_bridge_data(bridge)

    from trimllm.export import save_compressed
    from trimllm.summary import describe
    from trimllm.surgery import bypass_attention, bypass_mlp, drop_blocks, get_plan

    loaded, tokenizer = load_for_cli(model, dtype)
    bridged = _bridge(loaded, tokenizer, block_ids, bridge, bridge_samples, bridge_ridge) if bridge else None
    try:
        if attn_ids:
            bypass_attention(loaded, attn_ids)
        if mlp_ids:
            bypass_mlp(loaded, mlp_ids)
        if block_ids:
            drop_blocks(loaded, block_ids)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--blocks/--attention/--mlp") from None
    save_compressed(loaded, tokenizer, out, plan=get_plan(loaded), overwrite=overwrite)
    typer.echo(describe(loaded))
    if bridged:
        loss = bridged["lm_loss"]
        typer.echo(f"\nBridge at the cuts after blocks {bridged['bridged_cuts']}: LM loss on {bridge_samples} held-out "
                   f"{bridge} texts {loss['full']} at full depth, {loss['plain']} after plain removal, "
                   f"{loss['bridge']} with the bridge")
    typer.echo(f"\nSaved to {out}")


def _bridge(model, tokenizer, blocks: list[int], data: str, samples: int, ridge: float) -> dict:
    """Fit and fold the bridges of ``blocks`` on ``data``'s train side (held-out texts for the loss it reports)."""
    from trimllm.bridge import bridge_cuts
    from trimllm.scoring.calibration import build_lm_batches

    fit, held_out = bridge_texts(data, tokenizer, samples)
    try:
        return bridge_cuts(model, blocks, build_lm_batches(tokenizer, fit, 8, 512),
                           build_lm_batches(tokenizer, held_out, 8, 512), ridge)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--blocks") from None


def _check_bridge_data(data: str) -> None:
    """--bridge names a bundled task with a prompt, or a valid recipe: said before the model loads."""
    if data.endswith((".yaml", ".yml")):
        from trimllm.validation import load_recipe

        load_recipe(data)  # every problem of the recipe, as `trimllm validate` says them
        return
    from trimllm.data import get_spec
    from trimllm.prompts import supported

    try:
        get_spec(data)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--bridge") from None
    if data not in supported():
        raise typer.BadParameter(f"{data!r} has no prompt format; use one of {', '.join(supported())} or a recipe "
                                 ".yaml", param_hint="--bridge")


def bridge_texts(data: str, tokenizer, samples: int) -> tuple[list[str], list[str]]:
    """Two disjoint sets of ``samples`` train-side texts of ``data`` (a bundled task, or a recipe's data)."""
    from trimllm.scoring.calibration import CalibrationSet

    if data.endswith((".yaml", ".yml")):
        from trimllm.formats import training_data
        from trimllm.validation import load_recipe

        recipe = load_recipe(data, [f"data.n_calibration={samples}", f"data.n_validation={samples}", "data.n_train=1"])
        drawn = training_data(recipe.data, tokenizer)
        return CalibrationSet(data, drawn.calibration).texts(), CalibrationSet(data, drawn.validation).texts()
    from trimllm.data import train_side_splits
    from trimllm.prompts import mc_item

    try:
        splits = train_side_splits(data, n_validation=samples, n_calibration=samples)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--bridge") from None
    texts = {k: CalibrationSet(data, [mc_item(data, r) for r in v]).texts() for k, v in splits.items()}
    return texts["calibration"], texts["validation"]


@app.command("eval")
def eval_command(
    model: Annotated[str | None, typer.Argument(help="Model to evaluate (as for `info`); omit with --list.")] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks or groups, e.g. science,general or sciq.")] = "science,general",
    limit: Annotated[float | None, typer.Option(help="At most N test documents per task (a fraction if < 1).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="lm-eval batch size.")] = 8,
    num_fewshot: Annotated[int | None, typer.Option("--num-fewshot", help="Few-shot examples (from the train side).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for results.json, results.md, samples.")] = None,
    log_samples: Annotated[bool, typer.Option("--log-samples", help="Also write per-document samples.")] = False,
    list_tasks: Annotated[bool, typer.Option("--list", help="List the tasks and groups, then exit.")] = False,
    include_path: Annotated[Path | None, typer.Option("--include-path", help="More task YAMLs, e.g. a run's tasks/ (your own data set's task).")] = None,
    runtime: Annotated[str, typer.Option(help="transformers, or llamacpp: run a .gguf in llama.cpp itself.")] = "transformers",
    dtype: DtypeOpt = "auto",
) -> None:
    """Evaluate a model on trimllm's domain and general tasks (and your own, --include-path) with lm-eval."""
    from trimllm.evaluation import evaluate, resolve_tasks, results_table, task_groups, write_results

    if list_tasks:
        for group, members in task_groups().items():
            typer.echo(f"{group}: {', '.join(members)}")
        return
    if model is None:
        raise typer.BadParameter("pass a MODEL to evaluate (or --list)", param_hint="MODEL")
    if include_path is not None and not include_path.is_dir():
        raise typer.BadParameter(f"{include_path} is {'a file' if include_path.exists() else 'not there'}; "
                                 "--include-path is a folder of lm-eval task YAMLs (e.g. a run's tasks/)",
                                 param_hint="--include-path")
    try:
        names = resolve_tasks([t for t in tasks.split(",") if t], include_path)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--tasks") from None
    if log_samples and out is None:
        raise typer.BadParameter("--log-samples needs --out", param_hint="--log-samples")
    check_sizes([("--batch-size", batch_size, 1), ("--num-fewshot", num_fewshot, 0)])
    if limit is not None and not (limit > 0 and math.isfinite(limit)):
        raise typer.BadParameter(f"--limit must be > 0 (documents per task, or a share if < 1), got {limit}",
                                 param_hint="--limit")
    if out is not None:
        check_output(out, False, ("trimllm results", "a trimllm export"), "--out")  # a model folder: into its card
    limit_value = int(limit) if limit is not None and limit >= 1 else limit
    if runtime not in RUNTIMES:
        raise typer.BadParameter(f"expected {' or '.join(RUNTIMES)}, got {runtime!r}", param_hint="--runtime")
    if runtime == "llamacpp":  # lm-eval on the GGUF as llama.cpp runs it; no transformers anywhere
        from trimllm.llamacpp import LlamaCppLM

        loaded, tokenizer = LlamaCppLM(model), None
    else:
        loaded, tokenizer = load_for_cli(model, dtype)
    results = evaluate(loaded, tokenizer, names, limit=limit_value, batch_size=batch_size,
                       num_fewshot=num_fewshot, log_samples=log_samples, include_path=include_path)
    shown = None if tokenizer is None else loaded  # parameter counts of a transformers model
    typer.echo(results_table(results, shown))
    if out is not None:
        write_results(results, out, shown)
        typer.echo(f"Results written to {out}")


@app.command()
def score(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="Directory for scores.json, scores.md and scores.png.")],
    data: Annotated[str, typer.Option(help="Calibration data set (train side only), e.g. sciq, financial_phrasebank.")] = "sciq",
    scorer: Annotated[str, typer.Option(help=f"Comma-separated scorers, of: {', '.join(scorer_names())}.")] = "block_influence",
    granularity: Annotated[str, typer.Option(help="block (whole blocks) or sublayer (attention and MLP halves).")] = "block",
    n_calib: Annotated[int, typer.Option("--n-calib", help="Calibration examples.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the calibration draw (and of the random scorer).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass.")] = 8,
    angular_n: Annotated[int, typer.Option("--angular-n", help="Run length n of the angular and teacher_kl scorers.")] = 1,
    proxy_k: Annotated[int | None, typer.Option("--proxy-k", help="task_accuracy: scan exactly only the k candidates the proxy ranks lowest.")] = None,
    proxy: Annotated[str, typer.Option(help="Proxy scorer for --proxy-k: block_influence (one pass), or task_accuracy on --proxy-fraction of the questions.")] = "block_influence",
    proxy_fraction: Annotated[float, typer.Option("--proxy-fraction", help="Share of the calibration questions the task_accuracy proxy scans.")] = 0.25,
    dtype: DtypeOpt = "auto",
) -> None:
    """Score every block (or half) of a model: higher = more important."""
    from trimllm.validation import score_option_problems

    names = [s for s in scorer.split(",") if s]
    check_sizes([("--n-calib", n_calib, 1), ("--batch-size", batch_size, 1), ("--angular-n", angular_n, 1),
                  ("--proxy-k", proxy_k, 1)])
    problems = score_option_problems(names, data, granularity, proxy, proxy_k, proxy_fraction)
    if problems:
        raise typer.BadParameter("; ".join(problems), param_hint="--scorer/--data/--granularity")
    check_output(out, False, "trimllm scores", "--out")

    from trimllm.report import write_scores
    from trimllm.scoring import CalibrationSet, run_scorer, scorer_options

    try:
        calibration = CalibrationSet.from_dataset(data, n_calib, seed=seed)
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err), param_hint="--data/--n-calib") from None
    loaded, tokenizer = load_for_cli(model, dtype)
    settings = {"n": angular_n}
    if proxy_k:
        settings.update(proxy=proxy, proxy_k=proxy_k, proxy_fraction=proxy_fraction)
    results = []
    for name in names:
        result = run_scorer(name, loaded, tokenizer, calibration, granularity=granularity, batch_size=batch_size,
                            seed=seed, progress=True, **scorer_options(name, **settings))
        typer.echo(f"{name}: least important {', '.join(c for c, _ in result.ranked()[:5])} ({result.meta['seconds']:.1f} s)")
        results.append(result)
    meta = {"model": model, "dataset": data, "n_calib": n_calib, "seed": seed, "granularity": granularity,
            "calibration_uids": calibration.uids}
    write_scores(results, meta, out)
    typer.echo(f"Scores written to {out}")
