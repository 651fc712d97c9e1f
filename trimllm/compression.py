"""``trimllm compress``: the deepest cut within the user's tolerance, verified on held-out data, proven to deploy.

The question users ask is "how small and fast can my domain model get if I accept at most X points?", not "what
happens at 25 %?". The job, top to bottom:

1. **Reference**: the recipe's full-depth fine-tune (``train.stage0_steps``, else ``steps_per_stage``; ``0`` takes
   the model as it is), a trimllm run in ``reference/``. Its validation metric is what every drop is measured against.
2. **Estimates**: the reference scored once by the recipe's scorer; at each candidate depth (every
   ``compress.step`` blocks up to ``compress.max_fraction``) the lowest-ranked blocks removed, bridged when the
   recipe has ``bridge`` (ReplaceMe, Shopkhoev et al. 2025), no training. Cheap, and a floor under what healing
   reaches: a depth the estimates keep within the tolerance needs no probe.
3. **Probes** bisect the candidates deeper than that (:func:`trimllm.depth_search.probe_depths`): by default each
   is the whole healing of step 4 (``compress.probe_fraction: 1``), as shorter ones under-predict it (Financial
   PhraseBank: 12-step probes 10-33 points under the reference where a full healing keeps 50 % of the blocks).
4. **Heal and verify**: the deepest depth whose probe is within the tolerance gets the recipe's whole recovery
   (its training of the pruned model, ``train.final_stage_steps``, run as ``oneshot`` on the reference in
   ``heal_DD/``: the healing of ShortGPT / Gromov et al. 2024) and is verified on held-out train-side items that no run saw: the one-sided upper bound of
   its paired drop against the reference must be within the tolerance. A miss backs off to the next shallower one.
5. **Proof** (:mod:`trimllm.deploy_proof`): ``final/`` reloaded by plain transformers in a fresh process; with
   llama.cpp, GGUF f16 and ``compress.quant`` checked against the log-probabilities recorded at export, the test
   side's accuracy, and speed and size beside the original's; ``compress.md`` and its plot.

Every figure is kept in ``compress.json`` by depth, independent of the tolerance, so a killed job resumes where it
stopped and a rerun at another tolerance reuses what was measured.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from trimllm import depth_search, formats
from trimllm.atomic import atomic_directory, write_text_atomic
from trimllm.config import CompressConfig, Recipe, ScheduleConfig, StopConfig
from trimllm.errors import RecipeError
from trimllm.layout import STAGE_GLOB, RunDir
from trimllm.modeling import load_model
from trimllm.outputs import check_output
from trimllm.rundir import RUN_OPTIONS, clear, flatten, lock, unlock

logger = logging.getLogger(__name__)
STATE_FILE = "compress.json"
# What a recorded figure depends on: the recipe, except what only the proof, the logging or the output folder read.
NOT_IDENTITY = {"output_dir", "stop", "eval"}
# Not what a figure measures: how the proof runs, and the search's policy (a probe records its own steps)
PROOF_ONLY = {"runtime", "quant", "test_limit", "probes", "probe_fraction", "backoffs"}
MIN_VERIFY = 10  # held-out records: fewer give no interval worth the name


@dataclass
class Job:
    """One compress folder: the recipe, the tolerance of this call, and every figure measured so far."""

    out: Path
    recipe: Recipe
    settings: CompressConfig
    tolerance: float
    state: dict

    def save(self) -> None:
        write_text_atomic(self.out / STATE_FILE, json.dumps(self.state, indent=1) + "\n")


def compress(recipe: Recipe, tolerance: float, overwrite: bool = False) -> dict:
    """Find, heal, verify and prove the deepest cut of ``recipe``'s model within ``tolerance`` points of the
    reference's validation metric. Returns the job's record (also ``output_dir/compress.json``)."""
    job = open_job(recipe, tolerance, overwrite)
    try:
        check_verification(job)  # before any training: a draw that leaves nothing to verify on is refused
        reference = reference_run(job)
        model, tokenizer = load_model(reference, dtype=recipe.model.dtype)
        verify_items = formats.held_out_items(recipe.data, tokenizer, job.settings.verify_items,
                                              formats.corpus_size(recipe))  # never trained on
        estimates(job, model, tokenizer)
        del model
        safe = depth_search.safe_depth(_by_depth(job.state["estimates"]), job.state["reference"], tolerance)
        probed = depth_search.probe_depths(job.state["depths"], safe, lambda d: probe(job, d, verify_items, tokenizer),
                                           job.state["reference"], tolerance, job.settings.probes, known_figures(job))
        order = depth_search.heal_order(probed, safe, job.state["reference"], tolerance, job.settings.backoffs)
        chosen = next((d for d in order if heal_and_verify(job, d, verify_items, tokenizer)), 0)
        job.state["choice"] = choice_record(job, safe, probed, order, chosen)
        job.save()
        write_final(job, chosen)
        job.state["proof"] = proof(job, chosen)
        job.save()
        from trimllm.compress_report import write_report

        write_report(job.out, job.state)
        return job.state
    finally:
        unlock(job.out)


def open_job(recipe: Recipe, tolerance: float, overwrite: bool) -> Job:
    """The compress folder, locked: fresh, or the figures of an earlier job of the same recipe there (refused when
    the recipe changed what they measured, unless ``overwrite``)."""
    out = Path(recipe.output_dir)
    check_output(out, overwrite, own="a trimllm compress run")
    settings = recipe.compress or CompressConfig()
    identity = _identity(recipe)
    lock(out)
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state is not None and overwrite:  # check_output has checked that everything in out is trimllm's
        clear(out)
        state = None
    saved = _measured(state["identity"]) if state is not None else None  # keys now outside it are dropped
    if state is not None and saved != identity:
        unlock(out)
        changed = sorted(k for k in {**identity, **saved} if identity.get(k) != saved.get(k))
        changed = [f"{k}: {saved.get(k)!r} -> {identity.get(k)!r}" for k in changed]
        raise RecipeError([f"output_dir {out} holds a compress job of another recipe (changed: {', '.join(changed)}); "
                           "rerun with the same recipe to resume, set output_dir=..., or pass --overwrite"], "recipe")
    state = {**(state or {"estimates": {}, "probes": {}, "heals": {}}), "identity": identity}
    job = Job(out, recipe, settings, tolerance, state)
    job.state["tolerance"] = tolerance
    job.save()
    return job


def _identity(recipe: Recipe) -> dict:
    """The recipe's keys (flattened) that the measured figures depend on: not the run options, the output folder,
    the stop rules (the job sets its own), the evaluation or the proof's settings; as JSON reads them back."""
    return _measured(flatten(dataclasses.replace(recipe, compress=recipe.compress or CompressConfig()).to_dict()))


def _measured(flat: dict) -> dict:
    """The keys of a flattened recipe that the figures depend on (:func:`_identity`)."""
    keys = {k: v for k, v in flat.items()
            if k.split(".")[0] not in NOT_IDENTITY and k not in RUN_OPTIONS and k.removeprefix("compress.") not in PROOF_ONLY}
    return json.loads(json.dumps(keys))


def sub_recipe(job: Job, folder: str, **sections) -> Recipe:
    """A trimllm run inside the job's folder: the recipe with ``sections`` replaced, no compress settings, no
    drop limit and no final evaluation (the job evaluates once, on its final model)."""
    recipe = copy.deepcopy(job.recipe)
    recipe.compress, recipe.output_dir = None, str(job.out / folder)
    recipe.eval = dataclasses.replace(recipe.eval, tasks=[])
    if recipe.distill is not None and recipe.distill.cache_k and not recipe.distill.cache_dir:
        recipe.distill.cache_dir = str(job.out / "teacher_logits")  # one teacher cache for every healing run
    return dataclasses.replace(recipe, **sections)


def reference_run(job: Job) -> Path:
    """The full-depth fine-tune (``schedule: none`` on the recipe) in ``reference/``; returns its model folder."""
    from trimllm.pipeline import run

    recipe = sub_recipe(job, "reference", schedule=ScheduleConfig("none", {}), stop=StopConfig(target_fraction=None))
    result = run(recipe)
    job.state["reference"] = result["stages"][0]["val_acc"]
    job.state["reference_seconds"] = sum(result["stages"][0]["seconds"].values())
    job.save()
    return job.out / "reference" / "final"


def check_verification(job: Job) -> None:
    """Refuse a recipe whose draw leaves too few held-out records to verify on (:func:`held_out_records`), or whose
    bundled data set no single lm-eval task tests (the proof's test side: a set of subset tasks)."""
    cfg = job.recipe.data
    corpus = formats.corpus_size(job.recipe)  # the last unused records train as distill.corpus: never verified on
    found = len(formats.held_out_records(cfg, job.settings.verify_items, corpus))
    problems = [f"compress verifies on train-side records that no run trains on, but data.n_train = {cfg.n_train} "
                f"leaves {found} of {formats.data_name(cfg)}{f' beside distill.corpus_n = {corpus}' if corpus else ''} "
                f"(at least {MIN_VERIFY} needed): set data.n_train lower"] if found < MIN_VERIFY else []
    if not cfg.source and formats.test_task(cfg) == cfg.task:
        problems.append(f"compress proves its model on the test side of data.task, but {cfg.task} is a set of subset "
                        "tasks with no single test task: compress on one subset (its records as data.source), or "
                        "use `trimllm train`")
    if problems:
        unlock(job.out)
        raise RecipeError(problems, "recipe")


def estimates(job: Job, model, tokenizer) -> None:
    """Each candidate depth without training (the reference's lowest-ranked blocks removed, bridged per the
    recipe): its validation metric, in ``state["estimates"]``; the removal order in ``state["order"]``."""
    from trimllm.decisions import Inputs, score
    from trimllm.pipeline import remove_candidates
    from trimllm.scoring import CalibrationSet
    from trimllm.surgery import get_plan

    recipe, started = job.recipe, time.perf_counter()
    data = formats.training_data(recipe.data, tokenizer)
    calibration = CalibrationSet(formats.data_name(recipe.data), data.calibration, recipe.data.seed)
    if "order" not in job.state:
        ranked = score(Inputs(recipe, model, tokenizer, calibration), "block").ranked()
        job.state["order"] = [c for c, _ in ranked]
        job.state["n_blocks"] = len(get_plan(model).kept)
    job.state["depths"] = depth_search.candidate_depths(job.state["n_blocks"], job.settings.step,
                                                        job.settings.max_fraction)
    for depth in job.state["depths"]:
        if str(depth) in job.state["estimates"]:
            continue
        pruned = copy.deepcopy(model)
        remove_candidates(pruned, tokenizer, calibration, recipe, job.state["order"][:depth])
        job.state["estimates"][str(depth)] = _metric(pruned, tokenizer, data.validation, data.metric, recipe)
        job.state["estimate_seconds"] = job.state.get("estimate_seconds", 0.0) + time.perf_counter() - started
        started = time.perf_counter()
        job.save()
        logger.info("compress: estimate at %d blocks removed: %.4f (reference %.4f)", depth,
                    job.state["estimates"][str(depth)], job.state["reference"])


def _metric(model, tokenizer, items, metric, recipe) -> float:
    return formats.validation_metric(metric, model, tokenizer, items, recipe.scoring.batch_size, recipe.data.max_length)


def healing_steps(recipe: Recipe) -> int:
    return recipe.train.final_stage_steps or recipe.train.steps_per_stage


def probe_steps(job: Job) -> int:
    return max(1, round(job.settings.probe_fraction * healing_steps(job.recipe)))


def pruned_run(job: Job, folder: str, depth: int, steps: int) -> dict:
    """A run that removes ``depth`` blocks from the reference at once (scored on it, as ``tuned_oneshot`` scores its
    tuned stage 0) and heals for ``steps`` steps: ``oneshot`` on the reference, one stage, so that no probe
    validates or exports the reference again. A ``stage0`` distillation teacher is the reference itself."""
    from trimllm.pipeline import run

    reference = str((job.out / "reference" / "final").resolve())
    train = dataclasses.replace(job.recipe.train, stage0_steps=steps)
    sections = {"model": dataclasses.replace(job.recipe.model, name=reference), "train": train,
                "schedule": ScheduleConfig("oneshot", {}),
                "stop": StopConfig(target_fraction=depth / job.state["n_blocks"])}
    if job.recipe.distill is not None:
        teacher = {"stage0": reference, "base": job.recipe.model.name}.get(job.recipe.distill.teacher,
                                                                            job.recipe.distill.teacher)
        sections["distill"] = dataclasses.replace(job.recipe.distill, teacher=teacher)
    result = run(sub_recipe(job, folder, **sections))
    last = result["stages"][-1]
    if sorted(last["removed"]) != sorted(job.state["order"][:depth]):  # the same scorer on the same model
        logger.warning("compress: %s removed %s, the estimates' order says %s", folder, last["removed"],
                       job.state["order"][:depth])
    return {"metric": last["val_acc"], "seconds": sum(last["seconds"].values()), "steps": last["steps"],
            "removed": last["removed"], "params": last["params"]}


def drop_models(run: Path, keep_final: bool) -> None:
    """Disk: a finished probe or healing run's model folders, which this job wrote (a healing run's final/ is what
    the job may copy); its run file and report stay."""
    for folder in [*run.glob(STAGE_GLOB), *([] if keep_final else [run / "final"])]:
        shutil.rmtree(folder, ignore_errors=True)


def probe(job: Job, depth: int, items: list, tokenizer) -> float:
    """A short healing run at ``depth`` (``probe_DD/``): its validation metric. Called only for depths without a
    figure (:func:`known_figures` answers the others); with ``probe_fraction: 1`` every probe is that depth's
    healing (the bisection heals, and the chosen depth's healing is its probe)."""
    if job.settings.probe_fraction >= 1:
        return heal(job, depth, items, tokenizer)["metric"]
    key = str(depth)
    job.state["probes"][key] = pruned_run(job, f"probe_{depth:02d}", depth, probe_steps(job))
    job.save()
    drop_models(job.out / f"probe_{depth:02d}", keep_final=False)  # its figures are what counts
    logger.info("compress: probe at %d blocks removed: %.4f", depth, job.state["probes"][key]["metric"])
    return job.state["probes"][key]["metric"]


def known_figures(job: Job) -> dict[int, float]:
    """What :func:`probe` answers without training: healed depths, and probes of the current length."""
    short = {int(d): r["metric"] for d, r in job.state["probes"].items() if r.get("steps") == probe_steps(job)}
    return {**short, **{int(d): r["metric"] for d, r in job.state["heals"].items()}}


def heal(job: Job, depth: int, items: list, tokenizer) -> dict:
    """Heal ``depth`` with the recipe's whole recovery (``heal_DD/``) and measure it on the held-out ``items``
    against the reference (once: the figures are kept by depth)."""
    key, recipe = str(depth), job.recipe
    if key not in job.state["heals"]:
        healed = pruned_run(job, f"heal_{depth:02d}", depth, healing_steps(recipe))
        drop_models(job.out / f"heal_{depth:02d}", keep_final=True)
        reference = _reference_scores(job, items, tokenizer)
        model, _ = load_model(job.out / f"heal_{depth:02d}" / "final", dtype=recipe.model.dtype)
        metric = formats.data_metric(recipe.data)
        scores = formats.item_scores(metric, model, tokenizer, items, recipe.scoring.batch_size, recipe.data.max_length)
        drop, se = depth_search.paired_drop(reference, scores)
        job.state["heals"][key] = {**healed, "verify_metric": sum(scores) / len(scores), "drop": drop, "se": se, "n": len(scores)}
        job.save()
    return job.state["heals"][key]


def heal_and_verify(job: Job, depth: int, items: list, tokenizer) -> bool:
    """:func:`heal`, then whether the drop's upper bound is within the tolerance."""
    healed = heal(job, depth, items, tokenizer)
    ok = depth_search.verified(healed["drop"], healed["se"], job.tolerance, job.settings.confidence)
    bound = depth_search.upper_bound(healed["drop"], healed["se"], job.settings.confidence)
    logger.info("compress: healed at %d blocks removed: drop %.2f points (upper bound %.2f at %.0f %%) -> %s", depth,
                healed["drop"], bound, 100 * job.settings.confidence, "verified" if ok else f"over {job.tolerance}")
    return ok


def _reference_scores(job: Job, items: list, tokenizer) -> list[float]:
    if "verify_reference" not in job.state:
        recipe = job.recipe
        model, _ = load_model(job.out / "reference" / "final", dtype=recipe.model.dtype)
        job.state["verify_reference"] = formats.item_scores(formats.data_metric(recipe.data), model, tokenizer, items,
                                                    recipe.scoring.batch_size, recipe.data.max_length)
        job.save()
    return job.state["verify_reference"]


def choice_record(job: Job, safe: int, probed: dict, order: list[int], chosen: int) -> dict:
    """What was decided at this tolerance, and the search's cost beside the final healing's: the estimates and
    every probe and healing run but the chosen one's (a missed healing, or a probe that was a healing, is search)."""
    final, heals, probes = job.state["heals"].get(str(chosen)), job.state["heals"], job.state["probes"]
    short = steps if (steps := probe_steps(job)) < healing_steps(job.recipe) else None  # probes that were not healings
    runs = [*(probes[str(d)] for d in probed if short and probes.get(str(d), {}).get("steps") == short),
            *(heals[k] for k in {str(d) for d in [*probed, *order]} - {str(chosen)} if k in heals)]
    search_s = job.state.get("estimate_seconds", 0.0) + sum(r["seconds"] for r in runs)
    return {"tolerance": job.tolerance, "confidence": job.settings.confidence, "safe_depth": safe,
            "probed": sorted(probed), "healed": [d for d in order if str(d) in heals], "removed": chosen,
            "n_blocks": job.state["n_blocks"], "search_seconds": search_s, "search_steps": sum(r["steps"] for r in runs),
            "healing_seconds": final["seconds"] if final else None, "healing_steps": final["steps"] if final else None,
            "search_share": search_s / final["seconds"] if final and final["seconds"] else None}


def write_final(job: Job, chosen: int) -> None:
    """Copy the chosen model (the reference when no cut is verified) to ``final/``, atomically."""
    source = job.out / (f"heal_{chosen:02d}" if chosen else "reference") / "final"
    atomic_directory(RunDir(job.out).final, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))


def proof(job: Job, chosen: int) -> dict:
    """The deployment proof of ``final/`` (:func:`trimllm.deploy_proof.prove`), made once per depth and proof
    settings: a rerun at another tolerance that chooses the same depth reuses it."""
    from trimllm.deploy_proof import prove

    cfg = job.settings
    key = f"{chosen}-{cfg.runtime}-{cfg.quant}-{cfg.test_limit}"
    proofs = job.state.setdefault("proofs", {})
    if key not in proofs:
        proofs[key] = prove(job.out, cfg, job.recipe, name=f"removed_{chosen:02d}" if chosen else "original")
        job.save()
    return proofs[key]


def _by_depth(figures: dict) -> dict[int, float]:
    return {int(k): v for k, v in figures.items()}
