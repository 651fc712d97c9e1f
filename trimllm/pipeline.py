"""The trimllm recipe, top to bottom: load -> data -> for each stage (decide, drop, freeze, train, validate,
export) -> choose the final model -> report.

Stage 0 fine-tunes the full-depth model (for ``oneshot`` it first removes everything up to the target); its
validation accuracy is the reference of the accuracy floor. Each later stage removes what the schedule chooses,
trains a fresh LoRA (merged at the end of the stage), validates and exports a standard checkpoint, so a run yields
a family of models along the accuracy / size curve.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from trimllm.config import Recipe, to_yaml
from trimllm.data import train_side_splits
from trimllm.distributed import barrier, init, is_main, on_main, world_size
from trimllm.export import atomic_directory, save_compressed, write_text_atomic
from trimllm.modeling import load_model
from trimllm.plan import count_parameters
from trimllm.prompts import mc_item
from trimllm.schedules import SCHEDULES, StageContext
from trimllm.scoring import CalibrationSet, run_scorer
from trimllm.scoring.candidates import parse, remove_candidate
from trimllm.sft import sft_examples
from trimllm.surgery import freeze_blocks, get_plan
from trimllm.train import last_checkpoint, mc_accuracy, train_stage

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """Everything the stage loop carries from one stage to the next."""

    recipe: Recipe
    out: Path
    model: object
    tokenizer: object
    calibration: CalibrationSet
    validation: list
    train_examples: list
    stages: list[dict] = field(default_factory=list)
    running: dict | None = None  # the stage in progress: its decision, written before training (for resume)
    final: dict | None = None


def run(recipe: Recipe, overwrite: bool = False) -> dict:
    """Run a recipe; returns the run plan (also written to ``output_dir/plan.json``).

    Rerunning the same recipe on the same ``output_dir`` resumes: completed stages are kept, the running stage
    continues from its last Trainer checkpoint, and a finished run returns its plan. Under ``torchrun`` every rank
    calls this; decisions are made on rank 0 and broadcast, files are written by rank 0.
    """
    init()
    state = setup(recipe, overwrite)
    if state.final is None:
        schedule = SCHEDULES.get(recipe.schedule.name)
        while not (state.stages and state.stages[-1]["last"]):
            stage = len(state.stages)
            pending = state.running if state.running and state.running["stage"] == stage else None
            if pending is None:
                started = time.perf_counter()
                decision = on_main(lambda: schedule(_context(state, stage)))  # noqa: B023  (called right here)
                if stage > 0 and not decision.drop:
                    break
                pending = {"stage": stage, "dropped": list(decision.drop), "last": decision.last,
                           "scorer": decision.scores.scorer if decision.scores else None,
                           "scores": decision.scores.scores if decision.scores else {},
                           "scoring_s": time.perf_counter() - started}
            record = run_stage(state, pending)
            state.stages.append(record)
            record["last"] = pending["last"] or _target_reached(state) or _below_floor(state)
            state.running = None
            _write_run_plan(state, None)
            if is_main():
                shutil.rmtree(state.out / ".trainer" / record["dir"], ignore_errors=True)
                logger.info(_summary(record))
        state.final = choose_final(state)
        finish(state, state.final)
        if is_main():
            logger.info("run: %d stages, final/ = stage %d | training %s", len(state.stages), state.final["stage"],
                        _throughput(state.stages))
    barrier()
    return _run_plan(state, state.final)


def setup(recipe: Recipe, overwrite: bool) -> RunState:
    """Prepare the output directory (fresh, or resumed when it holds a run of the same recipe), the model (the
    last completed stage's when resuming) and the train-side data."""
    out = Path(recipe.output_dir)
    previous = on_main(lambda: _prepare_output(out, recipe, overwrite))
    barrier()
    model_source = recipe.model.name
    if previous["stages"]:
        model_source = out / previous["stages"][-1]["dir"]
        if is_main():
            logger.info("resuming %s after stage %d", out, previous["stages"][-1]["stage"])
    model, tokenizer = load_model(model_source, dtype=recipe.model.dtype)
    data = recipe.data
    splits = train_side_splits(data.task, data.n_validation, data.n_calibration, data.seed, data.n_train)
    items = {name: [mc_item(data.task, r) for r in records] for name, records in splits.items()}
    calibration = CalibrationSet(data.task, items["calibration"], data.seed)
    examples = sft_examples(tokenizer, items["train"], data.max_length)
    return RunState(recipe, out, model, tokenizer, calibration, items["validation"], examples,
                    previous["stages"], previous["running"], previous["final"])


def _prepare_output(out: Path, recipe: Recipe, overwrite: bool) -> dict:
    """Start ``out`` afresh, or return what an earlier run of the same recipe completed there."""
    resolved = to_yaml(recipe)
    empty = {"stages": [], "running": None, "final": None}
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not (out / "resolved.yaml").is_file():
            raise FileExistsError(f"output_dir {out} is not empty and holds no trimllm run; set output_dir=... or "
                                  "pass --overwrite")
        elif (out / "resolved.yaml").read_text() != resolved:
            raise FileExistsError(f"output_dir {out} holds a run of a different recipe ({_differences(out, recipe)}); "
                                  "rerun with the same recipe to resume, set output_dir=..., or pass --overwrite")
        else:
            _remove_litter(out)
            plan_path = out / "plan.json"
            previous = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
            previous = {key: previous.get(key, default) for key, default in empty.items()}
            _trim_metrics(out, previous)
            return previous
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "resolved.yaml", resolved)
    return empty


def _remove_litter(out: Path) -> None:
    """Temporary siblings that a killed run's atomic writes left behind (``.stage_01.tmp-…``, ``.plan.json.tmp-…``)."""
    for stale in [*out.glob(".*.tmp-*"), *out.glob(".*.old-*")]:
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def _differences(out: Path, recipe: Recipe) -> str:
    import yaml

    def flatten(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    old, new = flatten(yaml.safe_load((out / "resolved.yaml").read_text())), flatten(recipe.to_dict())
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:5]) + (" ..." if len(keys) > 5 else "")


def _trim_metrics(out: Path, previous: dict) -> None:
    """Drop metrics.jsonl lines that the resumed run will log again (after the running stage's checkpoint)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    stage = len(previous["stages"])
    checkpoint = last_checkpoint(out / ".trainer" / f"stage_{stage:02d}")
    step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
    kept = [line for line in path.read_text().splitlines()
            if (record := json.loads(line))["stage"] < stage or (record["stage"] == stage and record["step"] <= step)]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def run_stage(state: RunState, pending: dict) -> dict:
    """Drop -> freeze -> train -> validate -> export one stage; return its record for plan.json.

    The decision is written to plan.json (``running``) before training, so a killed run resumes this very stage:
    the structure is rebuilt from it and training continues from the stage's last Trainer checkpoint.
    """
    recipe, plan, stage = state.recipe, get_plan(state.model), pending["stage"]
    for candidate in pending["dropped"]:
        remove_candidate(state.model, candidate)
    if "frozen" not in pending:
        started = time.perf_counter()
        pending["frozen"] = on_main(lambda: choose_frozen(state, stage))
        pending["scoring_s"] += time.perf_counter() - started
    if recipe.freeze.mode in ("progtuning", "contribution"):
        plan.frozen = []  # these modes choose the frozen set anew at every stage
    if pending["frozen"]:
        freeze_blocks(state.model, pending["frozen"])
    resume = state.running is not None and state.running["stage"] == stage
    state.running = pending
    _write_run_plan(state, None)
    started = time.perf_counter()
    state.model, trained = train_stage(state.model, state.tokenizer, state.train_examples, recipe,
                                       state.out / ".trainer" / f"stage_{stage:02d}", stage,
                                       state.out / "metrics.jsonl", resume=resume, steps=stage_steps(recipe, pending))
    training_s = time.perf_counter() - started
    started = time.perf_counter()
    val_acc = on_main(lambda: mc_accuracy(state.model, state.tokenizer, state.validation, recipe.scoring.batch_size,
                                          recipe.data.max_length))
    evaluation_s = time.perf_counter() - started
    record = {
        "stage": stage,
        "scorer": pending["scorer"],
        "scores": pending["scores"],
        "dropped": pending["dropped"],
        "removed": plan.modules()["dropped"],
        "frozen": [f"block.{i}" for i in plan.frozen],
        "blocks_kept": len(plan.kept),
        "params": count_parameters(state.model),
        "val_acc": val_acc,
        "seconds": {"scoring": round(pending["scoring_s"], 2), "training": round(training_s, 2),
                    "evaluation": round(evaluation_s, 2)},
        "tokens": {"real": trained.tokens_real, "padded": trained.tokens_padded},
        "peak_memory_mb": round(trained.peak_memory_mb, 1),
        "dir": f"stage_{stage:02d}",
    }
    if is_main():
        card = f"## trimllm run\n\nStage {stage} of `{state.out}`: validation accuracy {val_acc:.4f} on {recipe.data.task}."
        save_compressed(state.model, state.tokenizer, state.out / record["dir"], overwrite=True, extra_card=card)
    barrier()
    return record


def stage_steps(recipe: Recipe, pending: dict) -> int:
    """Training steps of a stage: ``train.final_stage_steps`` for the stage after the last removal, if set."""
    final = recipe.train.final_stage_steps
    return final if final and pending["last"] and pending["dropped"] else recipe.train.steps_per_stage


def choose_frozen(state: RunState, stage: int) -> list[int]:
    """Blocks to freeze this stage (original indices), by the recipe's freezing mode.

    static (TrimLLM): at stage 0, the fraction r of blocks whose removal hurts least, frozen for the whole run;
    progtuning (Progtuning): bottom-up, a growing share of r: round(r * kept * (s + 1) / (s + 2)) blocks at stage s;
    contribution: at every stage, the fraction r of remaining blocks with the lowest contribution.
    """
    cfg, plan = state.recipe.freeze, get_plan(state.model)
    count = int(round(cfg.fraction * len(plan.kept)))
    if cfg.mode == "none" or count == 0:
        return []
    if cfg.mode == "progtuning":
        return plan.kept[: int(round(cfg.fraction * len(plan.kept) * (stage + 1) / (stage + 2)))]
    if cfg.mode == "static" and stage > 0:
        return []  # frozen once at stage 0 and kept in the plan
    ranked = _score(state, "block").ranked()
    return sorted(parse(c)[1] for c, _ in ranked[:count])


def choose_final(state: RunState) -> dict:
    """The smallest model whose validation accuracy meets the floor (or the last stage when there is no floor)."""
    floor = state.recipe.stop.accuracy_floor
    reference = state.stages[0]["val_acc"]
    eligible = [s for s in state.stages if floor is None or s["val_acc"] >= floor * reference]
    if not eligible:
        eligible = [state.stages[0]]
    if floor is None:
        best = eligible[-1]
    else:
        best = min(eligible, key=lambda s: (s["params"], -s["val_acc"]))
    return {"stage": best["stage"], "dir": "final", "from": best["dir"], "val_acc": best["val_acc"],
            "floor": floor, "reference_val_acc": reference}


def finish(state: RunState, final: dict) -> None:
    """Copy the chosen stage to final/, write plan.json, report.md and the plots (rank 0)."""
    from trimllm.report import stage_plots, stage_report

    if not is_main():
        return
    source = state.out / final["from"]
    atomic_directory(state.out / "final", lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
    shutil.rmtree(state.out / ".trainer", ignore_errors=True)
    write_text_atomic(state.out / "report.md", stage_report(state.stages, final, state.recipe))
    stage_plots(state.out)
    if state.recipe.eval.tasks:
        from trimllm.evaluation import evaluate, write_results

        final_model, tokenizer = load_model(state.out / "final", dtype=state.recipe.model.dtype)
        results = evaluate(final_model, tokenizer, state.recipe.eval.tasks, limit=state.recipe.eval.limit,
                           batch_size=state.recipe.eval.batch_size)
        write_results(results, state.out / "final_eval", final_model)
    _write_run_plan(state, final)  # last: a plan with "final" means everything above is on disk


def _context(state: RunState, stage: int) -> StageContext:
    return StageContext(stage, state.model, state.tokenizer, state.calibration, state.recipe,
                        _budget(state), lambda granularity, scorer=None: _score(state, granularity, scorer))


def _score(state: RunState, granularity: str, scorer: str | None = None):
    cfg = state.recipe.scoring
    options = {"batch_size": cfg.batch_size, "max_length": state.recipe.data.max_length, "n": cfg.angular_n,
               "seed": state.recipe.train.seed}
    if cfg.proxy_k:
        options.update(proxy=cfg.proxy, proxy_k=cfg.proxy_k, proxy_fraction=cfg.proxy_fraction)
    return run_scorer(scorer or cfg.scorer, state.model, state.tokenizer, state.calibration,
                      granularity=granularity, **options)


def _units(plan, granularity: str) -> tuple[int, int]:
    """(removed, total) in the granularity's units: blocks, or halves (a dropped block counts as two)."""
    if granularity == "block":
        return len(plan.dropped), plan.num_layers
    return 2 * len(plan.dropped) + len(plan.bypassed_attention) + len(plan.bypassed_mlp), 2 * plan.num_layers


def _budget(state: RunState) -> int:
    """How many more modules the stop rules allow (target fraction and module budget; the parameter target and
    the accuracy floor are checked after each stage)."""
    stop, plan = state.recipe.stop, get_plan(state.model)
    granularity = "sublayer" if state.recipe.schedule.name == "trimllm" else state.recipe.scoring.granularity
    removed, total = _units(plan, granularity)
    limits = []
    if stop.target_fraction is not None:
        limits.append(int(round(stop.target_fraction * total)) - removed)
    if stop.max_modules is not None:
        limits.append(stop.max_modules - len(plan.modules()["dropped"]))
    if not limits:  # only a parameter target or an accuracy floor: go on until it is reached or crossed
        limits.append(total - removed - 1)
    return max(0, min(min(limits), len(plan.kept) * (1 if granularity == "block" else 2) - 1))


def _target_reached(state: RunState) -> bool:
    stop, plan = state.recipe.stop, get_plan(state.model)
    if stop.target_params_fraction is not None:
        if count_parameters(state.model) <= (1 - stop.target_params_fraction) * plan.params_original:
            return True
    return _budget(state) == 0


def _below_floor(state: RunState) -> bool:
    floor = state.recipe.stop.accuracy_floor
    return floor is not None and len(state.stages) > 1 and state.stages[-1]["val_acc"] < floor * state.stages[0]["val_acc"]


def _run_plan(state: RunState, final: dict | None) -> dict:
    plan = get_plan(state.model)
    return {"recipe": state.recipe.to_dict(), "base_model": plan.base_model, "num_layers": plan.num_layers,
            "params_original": plan.params_original, "stages": state.stages, "final": final}


def _write_run_plan(state: RunState, final: dict | None) -> None:
    if is_main():
        plan = {**_run_plan(state, final), "running": state.running}
        write_text_atomic(state.out / "plan.json", json.dumps(plan, indent=2) + "\n")


def _summary(record: dict) -> str:
    seconds = record["seconds"]
    ranks = f"[{world_size()} processes] " if world_size() > 1 else ""
    return (f"{ranks}stage {record['stage']}: dropped {', '.join(record['dropped']) or '-'} | {record['blocks_kept']} blocks, "
            f"{record['params']:,} params | val acc {record['val_acc']:.4f} | scoring {seconds['scoring']:.0f}s, "
            f"training {seconds['training']:.0f}s, eval {seconds['evaluation']:.0f}s | {_throughput([record])}")


def _throughput(stages: list[dict]) -> str:
    """Training tokens (real / as computed with padding), real tokens/s and peak memory of some stages."""
    real = sum(s["tokens"]["real"] for s in stages)
    padded = sum(s["tokens"]["padded"] for s in stages)
    seconds = sum(s["seconds"]["training"] for s in stages)
    return (f"tokens {real:,} real / {padded:,} computed ({1 - real / max(padded, 1):.1%} padding), "
            f"{real / max(seconds, 1e-9):,.0f} tokens/s, peak memory {max(s['peak_memory_mb'] for s in stages):,.0f} MB")
