"""The run folder (``output_dir``): start it, or resume the run of the same recipe it holds.

A run folder holds ``resolved.yaml`` (the recipe), the run file (``run.json``, :mod:`trimllm.records`),
``metrics.jsonl``, the stage checkpoints and the Trainer's checkpoints of the running stage
(``.trainer/stage_XX``). Rerunning the same recipe resumes; a different recipe is refused with the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import yaml

from trimllm.atomic import TEMP_NAME, write_text_atomic
from trimllm.config import Recipe, to_yaml
from trimllm.layout import LOCK, RUN_FILE, STAGE_GLOB, RunDir
from trimllm.outputs import check_replaceable, check_writable
from trimllm.plan import PLAN_FILE
from trimllm.records import RunFile

logger = logging.getLogger(__name__)
_held: dict[str, int] = {}

# Run options: how a run is carried out and logged, not what it computes. They are outside the run's identity, so
# a killed run resumes after they change (_changed below); everything else names the method and its data.
RUN_OPTIONS = frozenset({
    "output_dir", "train.logging_steps", "train.report_to", "train.save_steps",  # where, logging, trackers, checkpoints
    "train.fsdp", "train.fsdp_config", "train.deepspeed",  # distributed settings (the global batch stays the same)
    "train.gradient_checkpointing",  # recomputed activations: memory, not the training (tests/integration/test_scale_script.py)
    "export.dtype", "export.stages",  # what is kept on disk (the resume point always stays as trained)
    "distill.cache_dir",  # where the teacher's cached logits are kept (a cache is keyed by what it holds)
    "eval.batch_size",  # lm-eval's batching of the final evaluation (the same documents, the same metric)
    "compress",  # a whole section: read by `trimllm compress` only, which keeps its own record (compress.json)
})


def lock(out: Path) -> None:
    """Hold ``out``'s run lock for this process (creating ``out``), or raise :class:`FileExistsError` naming the
    process that holds it: two runs in one folder would train twice and interleave their files."""
    import fcntl

    key = str(Path(out).resolve())
    if key in _held:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    # held (flock) by the one process running in the folder; the kernel releases it if that process dies
    fd = os.open(Path(out) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FileExistsError(f"output_dir {out} is in use by another trimllm run (pid {holder}); wait for it to "
                              "finish (or stop it), or set output_dir=... to another folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd


def unlock(out: Path) -> None:
    """Release ``out``'s run lock (the file stays: deleting it would let a waiting process lock a stale inode)."""
    import fcntl

    fd = _held.pop(str(Path(out).resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _has_content(out: Path) -> bool:
    return out.is_dir() and any(p.name != LOCK for p in out.iterdir())


def clear(out: Path) -> None:
    """Remove everything in ``out`` but the lock this process holds (already checked by check_replaceable)."""
    for path in out.iterdir():
        if path.name == LOCK:
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def prepare(out: Path, recipe: Recipe, overwrite: bool) -> RunFile | None:
    """Start ``out`` afresh (``None``), or return the run file of the earlier run of the same recipe there.

    Raises:
        FileExistsError: ``out`` holds other files, a run of another recipe, or a run of an older trimllm.
    """
    out, files = Path(out), RunDir(out)
    resolved = to_yaml(recipe)
    check_writable(out)
    if _has_content(out) and overwrite:
        check_replaceable(out)  # before anything is created in it
    elif _has_content(out) and not files.resolved.is_file():
        raise FileExistsError(f"output_dir {out} is not empty and holds no trimllm run; set output_dir=... to a "
                              "new or empty folder")
    lock(out)  # from here on this process is the only one in out
    if _has_content(out):
        if overwrite:
            clear(out)
        elif (changed := _changed(out, recipe)).keys and not _completed_stages(out):
            # a run that never completed a stage protects nothing: the corrected recipe starts over
            logger.warning("output_dir %s holds a run of another recipe that completed no stage: starting over", out)
            check_replaceable(out, "starting over (the run there completed no stage)")
            clear(out)
        elif changed.keys and {key.split(".")[0] for key in changed.keys} <= {"eval"}:
            # only the evaluation asked for changed: keep the training, redo the final evaluation
            logger.warning("output_dir %s: only eval.* changed; keeping the trained stages and evaluating again", out)
            previous = RunFile.read(out)
            previous.final = None
            write_text_atomic(files.resolved, resolved)
            return previous
        elif changed.keys:
            raise FileExistsError(f"output_dir {out} holds a run of a different recipe ({changed.describe()}); "
                                  "rerun with the same recipe to resume, set output_dir=..., or pass --overwrite")
        elif (out / PLAN_FILE).is_file() and not (out / RUN_FILE).is_file():
            raise FileExistsError(f"output_dir {out} holds a run of an older trimllm (its run file is {PLAN_FILE}, now "
                                  f"{RUN_FILE}), which cannot be resumed; set output_dir=... or pass --overwrite")
        else:
            if changed.run_options:
                logger.warning("output_dir %s: run options changed (%s); resuming with the new values", out,
                               changed.describe(changed.run_options))
            if files.resolved.read_text() != resolved:  # keys added since at their defaults, run options
                write_text_atomic(files.resolved, resolved)
            remove_litter(out)
            previous = RunFile.read(out) if (out / RUN_FILE).is_file() else None
            trim_metrics(out, len(previous.stages) if previous else 0)
            return previous
    write_text_atomic(files.resolved, resolved)
    return None


def resume_point(out: Path, recipe: Recipe, overwrite: bool) -> tuple[RunFile | None, str | Path]:
    """Start ``out`` or take up the earlier run of the same recipe there (:func:`prepare`, on rank 0): (its run file
    or None, the model to load: the last completed stage's when resuming, else the recipe's)."""
    from trimllm.distributed import barrier, is_main, on_main

    previous = on_main(prepare, out, recipe, overwrite)
    barrier()
    if not (previous and previous.stages):
        return previous, recipe.model.name
    if is_main():
        logger.info("resuming %s after stage %d", out, previous.stages[-1].stage)
    return previous, out / previous.stages[-1].dir


def continued_run_file(out: Path, recipe: Recipe, previous: RunFile | None, plan, fingerprint: dict[str, str]) -> RunFile:
    """The run file the stage loop goes on with: the earlier run's, its data checked against ``fingerprint``
    before anything is rewritten (a decided stage whose training completed after all is decided afresh), or a new
    one for the model's ``plan``."""
    if previous:
        check_data(out, previous.data, fingerprint)
    run_file = previous or RunFile(recipe.to_dict(), plan.base_model, plan.num_layers, plan.params_original)
    run_file.data = fingerprint
    if run_file.running and run_file.running.stage != len(run_file.stages):
        run_file.running = None
    return run_file


def data_fingerprint(data, cfg) -> dict[str, str]:
    """A hash per part of the records a run uses (train examples, validation and calibration items, and a user
    data set's test side, which its task file holds): a resume on changed data is refused by :func:`check_data`."""
    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    parts = {"train": digest([(e["input_ids"], e.get("labels")) for e in data.examples]),
             "validation": digest([(i.uid, i.context, i.choices, i.gold) for i in data.validation]),
             "calibration": digest([(i.uid, i.context, i.choices, i.gold) for i in data.calibration])}
    if cfg.source:
        from trimllm.formats import DataSource

        parts["test"] = digest([r["_uid"] for r in DataSource.own(cfg).test])
    return parts


def check_data(out: Path, saved: dict[str, str] | None, now: dict[str, str]) -> None:
    """Refuse (:class:`FileExistsError`) to resume the run in ``out`` on data that differ from what it trained on."""
    changed = [part for part in now if saved and part in saved and saved[part] != now[part]]
    if changed:
        raise FileExistsError(f"output_dir {out} holds a run trained on other data: the {', '.join(changed)} "
                              "records differ from those the run used (the data file or folder changed since). "
                              "Resuming would mix the two; set output_dir=... to start a new run, or pass "
                              "--overwrite to start this one over")


def _completed_stages(out: Path) -> int:
    """Stages the run in ``out`` completed (an exported ``stage_XX`` counts, whatever the run file says)."""
    exported = len(list(out.glob(STAGE_GLOB)))
    try:
        return max(exported, len(RunFile.read(out).stages) if (out / RUN_FILE).is_file() else 0)
    except (ValueError, KeyError, TypeError):  # an unreadable run file of an older trimllm: keep the folder
        return max(exported, 1)


def remove_litter(out: Path) -> None:
    """Temporary siblings that a killed run's atomic writes left behind (``.stage_01.tmp-…``, ``.run.json.tmp-…``)."""
    for stale in [p for p in out.iterdir() if TEMP_NAME.fullmatch(p.name)]:
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def flatten(node, prefix=""):
    """A recipe mapping as ``{"section.key": value}``."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


class RecipeChange(NamedTuple):
    """The saved recipe, the new one (both flattened), the keys of the run's identity whose values differ, and the
    run options (:data:`RUN_OPTIONS`) that differ, which do not stop a resume."""

    old: dict
    new: dict
    keys: list[str]
    run_options: list[str] = []

    def describe(self, keys: list[str] | None = None) -> str:
        """The first five changed keys as ``key: old -> new``, for the message that refuses to resume; where a
        default changed since the run was saved, how to resume it as it started."""
        keys = self.keys if keys is None else keys
        shown = ", ".join(f"{k}: {self.old.get(k)!r} -> {self.new.get(k)!r}" for k in keys[:5])
        hints = [f"; the default of {k} is now {self.new[k]!r} ({why}): pass {k}={self.old[k]} to resume this run"
                 for k, (former, why) in CHANGED_DEFAULTS.items() if k in keys and self.old.get(k) == former]
        return shown + (" ..." if len(keys) > 5 else "") + "".join(hints)


# Defaults that changed since v0.1: the former value, and why. A run saved under the former default holds it in its
# resolved.yaml, so it is refused as another recipe rather than silently resumed under a different method.
CHANGED_DEFAULTS = {"schedule.options.order": ("rescore", "progressive scores once and keeps that order; study v2")}


def _saved_recipe(out: Path) -> dict:
    """The recipe saved in ``out`` in the current spelling, the plug-ins' option defaults filled in as they are in
    a new recipe (a run folder of v0.2 spelled the options elsewhere: :mod:`trimllm.recipe_file`)."""
    from trimllm.plugin_options import resolve_defaults
    from trimllm.recipe_file import build_recipe, upgrade

    raw = yaml.safe_load(RunDir(out).resolved.read_text()) or {}
    if isinstance(raw.get("scoring"), dict) and "options" not in (raw.get("schedule") or {}):
        # Written before v0.3 (which always writes schedule.options): where it names no order it ran v0.1's.
        raw["scoring"].setdefault("order", CHANGED_DEFAULTS["schedule.options.order"][0])
    upgrade(raw, saved=True)
    keys = set(raw)
    typed = resolve_defaults(build_recipe(raw, [])).to_dict()
    return {k: v for k, v in typed.items() if k in keys}  # a section the saved run lacks ran at its then default


def _changed(out: Path, recipe: Recipe) -> RecipeChange:
    """How ``recipe`` differs from the one saved in ``out``. A key the saved recipe lacks (one this trimllm added
    since) ran at the default of its time, so a run started before an upgrade still resumes when the new recipe
    leaves the key at that value."""
    saved, new = flatten(_saved_recipe(out)), flatten(recipe.to_dict())
    then = {**flatten(Recipe().to_dict()), **{k: former for k, (former, _) in CHANGED_DEFAULTS.items()}}
    old = {**{k: v for k, v in then.items() if k in new}, **saved}
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    option = [k for k in changed if k in RUN_OPTIONS or k.split(".")[0] in RUN_OPTIONS]  # a key, or a whole section
    return RecipeChange(old, new, [k for k in changed if k not in option], option)


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete Trainer checkpoint in ``work_dir``: the Trainer writes ``trainer_state.json`` last, so a
    checkpoint killed while being written has none and is skipped."""
    if not work_dir.is_dir():
        return None
    complete = [p for p in work_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def trim_metrics(out: Path, stage: int) -> None:
    """Drop metrics.jsonl lines that the resumed run will log again (those of ``stage`` after its checkpoint)."""
    path = RunDir(out).metrics
    if not path.is_file():
        return
    checkpoint = last_checkpoint(RunDir(out).trainer(stage))
    step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
    kept = [line for line in path.read_text().splitlines()
            if (record := json.loads(line))["stage"] < stage or (record["stage"] == stage and record["step"] <= step)]
    write_text_atomic(path, "".join(line + "\n" for line in kept))
