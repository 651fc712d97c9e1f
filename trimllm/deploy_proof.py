"""The proof that a compressed model deploys, made in the run that made it (``trimllm compress``'s last step).

1. ``final/`` reloaded by plain transformers in a fresh process gives the log-probabilities trimllm recorded when it
   saved the model (:mod:`trimllm.logits_check`).
2. With ``compress.runtime: llamacpp``: converted by llama.cpp's own tools to GGUF at f16 and at
   ``compress.quant``, llama.cpp gives those log-probabilities within the type's tolerance; the test side's
   accuracy through llama.cpp, beside the reference's at the same type; speed, memory and size of the original
   (the full-depth reference) and the compressed model side by side (:func:`trimllm.llamacpp.compare`).

A check that fails raises :class:`DeployProofFailed` after the figures are saved: a model that reloads wrong is
not a result, whatever its validation accuracy said.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from trimllm import logits_check
from trimllm.atomic import write_text_atomic
from trimllm.config import CompressConfig, Recipe

logger = logging.getLogger(__name__)
PROOF_FILE = "proof.json"


class DeployProofFailed(RuntimeError):
    """A compressed model that does not run as trimllm measured it (its lines say where, by how much)."""


def prove(out: Path, settings: CompressConfig, recipe: Recipe, name: str = "compressed", final: str = "final",
          reference: str = "reference/final") -> dict:
    """The proof of ``out/final`` (against ``out/reference/final`` for accuracy and speed); saved as
    ``out/deploy/proof.json`` and returned; its GGUF files are ``deploy/{original,NAME}-{f16,QUANT}.gguf``. Raises
    :class:`DeployProofFailed` when a check fails."""
    folder, original = out / final, out / reference
    checks = [logits_check.transformers_check(folder)]
    proof: dict = {"runtime": settings.runtime}
    deploy = out / "deploy"
    if settings.runtime == "llamacpp":
        files = {(label, quant): gguf_file(source, deploy / f"{stem}-{quant}.gguf", quant)
                 for label, stem, source in (("original", "original", original), ("compressed", name, folder))
                 for quant in ("f16", settings.quant)}
        checks += [logits_check.gguf_check(folder, files["compressed", q], q) for q in ("f16", settings.quant)]
        tests: dict[Path, dict] = {}  # the same file once (nothing verified: final/ is the reference)
        for path in (files["original", settings.quant], files["compressed", settings.quant]):
            tests[path] = tests.get(path) or test_accuracy(path, recipe, out, settings.test_limit)
        proof["test"] = {"original": tests[files["original", settings.quant]],
                         "compressed": tests[files["compressed", settings.quant]]}
        proof["test"]["quant"] = settings.quant
        from trimllm.llamacpp import compare

        variants = {f"{label} {quant}": path for (label, quant), path in files.items()
                    if label == "original" or path != files["original", quant]}  # each file timed once
        proof["speed"] = compare(variants, log=logger.info)
    proof["checks"] = [{**dataclasses.asdict(c), "ok": c.ok, "line": c.line()} for c in checks]
    deploy.mkdir(parents=True, exist_ok=True)
    write_text_atomic(deploy / PROOF_FILE, json.dumps(proof, indent=1) + "\n")
    failed = [c.line() for c in checks if not c.ok]
    if failed:
        raise DeployProofFailed(f"{folder} does not run as trimllm measured it:\n  " + "\n  ".join(failed))
    for check in checks:
        logger.info("deploy proof: %s", check.line())
    return proof


def gguf_file(folder: Path, path: Path, quant: str) -> Path:
    """``folder`` as a GGUF at ``quant`` (written once: a resumed job keeps trimllm's own file)."""
    from trimllm.gguf import export_gguf, written_by_trimllm

    if path.is_file() and written_by_trimllm(path):
        return path
    return export_gguf(folder, path, quant=quant, overwrite=True)


def test_accuracy(gguf: Path, recipe: Recipe, out: Path, limit: int | None) -> dict:
    """The recipe's task on its test side, run by llama.cpp on ``gguf`` (lm-eval's accuracy and standard error)."""
    from trimllm.evaluation import evaluate, resolve_tasks
    from trimllm.formats import test_task
    from trimllm.layout import RunDir
    from trimllm.llamacpp import LlamaCppLM

    include = RunDir(out / "reference").tasks
    task = resolve_tasks([test_task(recipe.data)], include)[0]  # lm-eval's name of the task (trimllm_fpb)
    results = evaluate(LlamaCppLM(gguf), None, [task], limit=limit, include_path=include)
    figures = results["results"][task]
    metric = "acc,none" if "acc,none" in figures else next(k for k in figures if k.endswith(",none") and
                                                           "stderr" not in k)
    return {"task": task, "metric": metric.split(",")[0], "value": figures[metric],
            "stderr": figures.get(metric.replace(",", "_stderr,"), None), "n": results["n-samples"][task]["effective"],
            "file": gguf.name}
