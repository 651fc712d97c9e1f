"""The trimllm recipe, top to bottom: load -> data -> for each stage (decide, remove, freeze, train, validate,
export) -> choose the final model -> report.

Stage 0 fine-tunes the full-depth model (``oneshot`` first removes everything up to the target); its validation
accuracy is the reference of the accuracy floor. Each later stage removes what the schedule chooses (TrimLLM's
progressive layer dropping, Hu et al. 2024, with any scorer), trains a fresh LoRA (merged at the end of the stage),
validates and exports a standard checkpoint, so a run yields a family of models along the accuracy / size curve.

The bookkeeping lives beside this file: the run folder and resume in :mod:`trimllm.rundir`, the typed records of
the run file in :mod:`trimllm.records`, the stop rules in :mod:`trimllm.stop`, and the recipe bound to the plug-ins
(schedule, scorer, freezing mode) in :mod:`trimllm.decisions`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from trimllm import stop
from trimllm.architectures import get_arch
from trimllm.atomic import atomic_directory, write_text_atomic
from trimllm.bridge import fit_bridges, fold_bridge
from trimllm.config import Recipe, RecipeError
from trimllm.decisions import Inputs, expected_stages, frozen_blocks, granularity, schedule_decision
from trimllm.distill import load_teacher, teacher_source
from trimllm.distributed import barrier, init, is_main, on_main, world_size
from trimllm.export import cast_export, save_compressed
from trimllm.formats import (
    corpus_examples,
    corpus_size,
    data_name,
    training_data,
    validation_metric,
    write_task,
)
from trimllm.freezing import chooses_anew
from trimllm.layout import RunDir, stage_name
from trimllm.logit_cache import LogitCache
from trimllm.logit_cache import build as build_cache
from trimllm.modeling import load_model
from trimllm.plan import count_parameters
from trimllm.prompts import MCItem
from trimllm.records import RunFile, StagePlan, StageRecord
from trimllm.report import progress_line, stage_line, stage_plots, stage_report, throughput_line
from trimllm.rundir import continued_run_file, data_fingerprint, resume_point, unlock
from trimllm.scoring import CalibrationSet, ScoreResult
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import parse, remove_candidate
from trimllm.sft import pad_id
from trimllm.stages import StageFiles, StageSpec, stage_spec
from trimllm.surgery import freeze_blocks, get_plan
from trimllm.training import StageStats, peak_memory_mb, train_stage
from trimllm.validation import target_module_problems

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """Everything the stage loop carries from one stage to the next."""

    recipe: Recipe
    out: Path
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    calibration: CalibrationSet
    validation: list[MCItem]
    train_examples: list[dict]
    run: RunFile
    metric: str = "acc"  # the validation metric: acc, or token_prob for completion / text data (trimllm.formats)
    teacher: nn.Module | None = None  # a distill section: loaded once, at the first stage that distills


def run(recipe: Recipe, overwrite: bool = False) -> dict:
    """Run a recipe; returns the run's result (also written to ``output_dir/run.json``).

    Rerunning the same recipe on the same ``output_dir`` resumes: completed stages are kept, the running stage
    continues from its last Trainer checkpoint, and a finished run returns its result. Under ``torchrun`` every rank
    calls this; decisions are made on rank 0 and broadcast, files are written by rank 0.
    """
    init()
    try:
        return _run(recipe, overwrite)
    finally:
        unlock(Path(recipe.output_dir))  # the run lock prepare() took (rank 0 only; a no-op elsewhere)


def _run(recipe: Recipe, overwrite: bool) -> dict:
    started = time.perf_counter()
    state = setup(recipe, overwrite)
    expected = expected_stages(recipe, state.model, len(state.run.stages))
    if state.run.final is None:
        while not (state.run.stages and state.run.stages[-1].last):
            plan = state.run.running or decide(state, len(state.run.stages))
            if plan is None:
                break  # nothing left to remove
            record = run_stage(state, plan)
            state.run.stages.append(record)
            state.run.running = None
            write_run_file(state)
            if is_main():
                shutil.rmtree(RunDir(state.out).trainer(record.stage), ignore_errors=True)
                tidy_stages(state)
                logger.info(stage_line(record, world_size()))
                logger.info(progress_line(len(state.run.stages), expected, time.perf_counter() - started))
        state.run.final = stop.choose_final(state.run.stages, recipe.stop.accuracy_floor, recipe.stop.max_drop)
        finish(state)
    barrier()
    return state.run.to_dict()


def setup(recipe: Recipe, overwrite: bool) -> RunState:
    """Prepare the output directory (fresh, or resumed when it holds a run of the same recipe: :mod:`trimllm.rundir`),
    the model (the last completed stage's when resuming) and the train-side data."""
    out = Path(recipe.output_dir)
    previous, source = resume_point(out, recipe, overwrite)
    model, tokenizer = load_model(source, dtype=recipe.model.dtype)
    get_arch(model)  # an unsupported family fails here, in one message, before any data or training
    problems = target_module_problems(model, recipe.lora.target_modules)
    if problems:
        raise RecipeError(problems, "recipe")
    data = training_data(recipe.data, tokenizer)
    if corpus_size(recipe):  # domain text beyond the task's examples, distilled (distill.corpus)
        data.examples += corpus_examples(recipe.data, tokenizer, recipe.distill.corpus, recipe.distill.corpus_n)
    run_file = continued_run_file(out, recipe, previous, get_plan(model), data_fingerprint(data, recipe.data))
    if recipe.data.source and is_main():  # the user's data set as an lm-eval task (eval.tasks, plain lm_eval)
        write_task(recipe.data, RunDir(out).tasks)
    calibration = CalibrationSet(data_name(recipe.data), data.calibration, recipe.data.seed)
    return RunState(recipe, out, model, tokenizer, calibration, data.validation, data.examples, run_file,
                    metric=data.metric)


def decide(state: RunState, stage: int) -> StagePlan | None:
    """The stage's decision (on rank 0): what the schedule removes, then what is frozen in the structure that
    remains. ``None`` when a later stage would remove nothing."""
    started = time.perf_counter()
    scored = next((s for s in state.run.stages if s.scores), None)
    first = ScoreResult(scored.scorer, scored.scores) if scored else None
    inputs = Inputs(state.recipe, state.model, state.tokenizer, state.calibration, first)
    decision = on_main(schedule_decision, inputs, stage)
    if stage > 0 and not decision.drop:
        return None
    remove(state, decision.drop)  # the freezing choice looks at the structure after this stage's removals
    frozen = on_main(frozen_blocks, inputs, stage)
    scores = decision.scores
    return StagePlan(stage, list(decision.drop), decision.last, scores.scorer if scores else None,
                     scores.scores if scores else {}, frozen, time.perf_counter() - started)


def remove(state: RunState, candidates: list[str]) -> None:
    """Remove the stage's candidates (:func:`remove_candidates`). Deterministic, so a resumed stage redoes it
    exactly."""
    remove_candidates(state.model, state.tokenizer, state.calibration, state.recipe, candidates)


def remove_candidates(model: nn.Module, tokenizer, calibration: CalibrationSet, recipe: Recipe,
                      candidates: list[str]) -> None:
    """Remove ``candidates`` from ``model``; with ``bridge`` set, a linear bridge fitted on the calibration texts is
    first folded in at each cut of whole blocks (ReplaceMe; :mod:`trimllm.bridge`)."""
    blocks = [index for kind, index in map(parse, candidates) if kind == "block"]
    cfg = recipe.bridge
    if cfg is not None and blocks:
        batches = build_lm_batches(tokenizer, calibration.texts(), recipe.scoring.batch_size, recipe.data.max_length)
        for before, bridge in fit_bridges(model, batches, blocks, cfg.ridge, cfg.n_tokens).items():
            fold_bridge(model, before, bridge)
    for candidate in candidates:
        remove_candidate(model, candidate)


def run_stage(state: RunState, plan: StagePlan) -> StageRecord:
    """Freeze -> train -> validate -> export one stage (its removals done); return its record.

    The decision is written to the run file (``running``) before training, so a killed run resumes this very
    stage: the structure is rebuilt from it and training continues from the stage's last Trainer checkpoint.
    """
    recipe, structure = state.recipe, get_plan(state.model)
    resume = state.run.running is not None
    if resume:  # the removals of a decided stage are redone on the last completed stage's model
        remove(state, plan.dropped)
    if chooses_anew(recipe.freeze.mode):
        structure.frozen = []
    if plan.frozen:
        freeze_blocks(state.model, plan.frozen)
    state.run.running = plan
    write_run_file(state)
    # the stage's training, from the recipe and the steps the completed stages recorded (trimllm.stages)
    spec = stage_spec(recipe, plan.stage, get_plan(state.model).pruned, plan.last and bool(plan.dropped),
                      state.run.stages)
    files = RunDir(state.out)
    started = time.perf_counter()
    if spec.steps:
        state.model, trained = train_stage(state.model, state.tokenizer, state.train_examples, recipe, spec,
                                           StageFiles(files.trainer(plan.stage), files.metrics,
                                                      files.tensorboard(plan.stage), resume),
                                           teacher=teacher(state, plan.stage))
    else:  # train.stage0_steps = 0: the model given is stage 0's model
        trained = StageStats(0, 0, 0.0, peak_memory_mb())
    training_s = time.perf_counter() - started
    started = time.perf_counter()
    val_acc = on_main(validation_metric, state.metric, state.model, state.tokenizer, state.validation,
                      recipe.scoring.batch_size, recipe.data.max_length)
    record = _record(state, plan, spec, trained, val_acc, training_s, time.perf_counter() - started)
    if is_main():
        card = f"## trimllm run\n\nStage {plan.stage}: validation {state.metric} {val_acc:.4f} on {data_name(recipe.data)}."
        save_compressed(state.model, state.tokenizer, files.root / record.dir, overwrite=True, extra_card=card,
                        recipe=state.recipe.to_dict())
    barrier()
    return record


def _record(state: RunState, plan: StagePlan, spec: StageSpec, trained: StageStats, val_acc: float,
            training_s: float, evaluation_s: float) -> StageRecord:
    """The completed stage's record; ``last`` when the schedule said so or a stop rule ends the run here."""
    structure, params = get_plan(state.model), count_parameters(state.model)
    record = StageRecord(
        stage=plan.stage, scorer=plan.scorer, scores=plan.scores, dropped=plan.dropped,
        removed=structure.modules()["dropped"], frozen=[f"block.{i}" for i in structure.frozen],
        blocks_kept=len(structure.kept), params=params, val_acc=val_acc,
        seconds={"scoring": round(plan.scoring_s, 2), "training": round(training_s, 2),
                 "evaluation": round(evaluation_s, 2)},
        tokens={"real": trained.tokens_real, "padded": trained.tokens_padded},
        peak_memory_mb=round(trained.peak_memory_mb, 1), dir=stage_name(plan.stage), last=False, steps=spec.steps)
    last = stop.is_last([*state.run.stages, record], structure, params, state.recipe.stop,
                        granularity(state.recipe), plan.last)
    return dataclasses.replace(record, last=last)


def teacher(state: RunState, stage: int) -> nn.Module | None:
    """The distillation teacher of ``stage`` (``distill``), or None. A resumed run rebuilds ``stage0`` from its
    exported checkpoint."""
    cfg = state.recipe.distill
    source = teacher_source(cfg.teacher, stage, state.out, state.recipe.model.name) if cfg is not None else None
    if source is not None and state.teacher is None:
        dtype = state.recipe.model.dtype if cfg.teacher_dtype == "auto" else cfg.teacher_dtype
        state.teacher = load_teacher(source, state.model, dtype)
        if cfg.cache_k:  # the teacher runs once, over the training data; every later step reads its top-k
            root = Path(cfg.cache_dir) if cfg.cache_dir else RunDir(state.out).teacher_logits
            folder = on_main(lambda: build_cache(state.teacher, state.tokenizer, state.train_examples, root,
                                                 cfg.cache_k, state.recipe.train.batch_size, pad_id(state.tokenizer),
                                                 logger.info).folder)
            state.teacher = LogitCache(folder)
    return state.teacher if source is not None else None


def tidy_stages(state: RunState) -> None:
    """Disk (``export``): once a stage is superseded it is cast to ``export.dtype``, and with ``export.stages:
    final`` only the last two stages stay (the resume point and the accuracy floor's fallback). The resume point
    and a ``stage0`` distillation teacher, which a resumed run reloads, stay as trained."""
    cfg, stages = state.recipe.export, state.run.stages
    teacher = state.recipe.distill is not None and state.recipe.distill.teacher == "stage0"
    for index, record in enumerate(stages[:-1]):
        folder = state.out / record.dir
        if not folder.is_dir() or (teacher and record.stage == 0):
            continue
        if cfg.stages == "final" and index < len(stages) - 2:
            shutil.rmtree(folder)
        elif cfg.dtype != "auto" and index == len(stages) - 2:  # just superseded: cast once
            cast_export(folder, cfg.dtype)


def finish(state: RunState) -> None:
    """Copy the chosen stage to final/, write report.md, the plots and the run file (rank 0); evaluate final/."""
    if not is_main():
        return
    final = state.run.final
    source = state.out / final.source
    dtype = state.recipe.export.dtype

    def write_final(tmp: Path) -> None:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if dtype != "auto":
            cast_export(tmp, dtype)

    files = RunDir(state.out)
    atomic_directory(files.final, write_final)
    shutil.rmtree(files.trainers, ignore_errors=True)
    write_text_atomic(files.report, stage_report(state.run.to_dict()["stages"], final.to_dict(), state.recipe))
    stage_plots(state.out)
    if state.recipe.eval.tasks:
        from trimllm.evaluation import evaluate, results_table, write_results
        from trimllm.export import add_results_to_card

        final_model, tokenizer = load_model(files.final, dtype=state.recipe.model.dtype)
        results = evaluate(final_model, tokenizer, state.recipe.eval.tasks, limit=state.recipe.eval.limit,
                           batch_size=state.recipe.eval.batch_size, include_path=files.tasks)
        write_results(results, files.final_eval, final_model)
        add_results_to_card(files.final, results_table(results, final_model))
    write_run_file(state)  # last: a run file with "final" means everything above is on disk
    logger.info("run: %d stages, final/ = stage %d | training %s", len(state.run.stages), final.stage,
                throughput_line(state.run.stages))


def write_run_file(state: RunState) -> None:
    if is_main():
        state.run.write(state.out)
