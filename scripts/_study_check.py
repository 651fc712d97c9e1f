"""study.py --lm-eval-check: the study's test-side accuracy through lm-eval itself, beside the packed scorer."""

from __future__ import annotations

import json
from pathlib import Path

from _common import ROOT, shown_path, write_json

from trimllm.evaluation import evaluate
from trimllm.modeling import load_model

LM_EVAL_TASK = {"financial_phrasebank": "trimllm_fpb", "sciq": "trimllm_sciq"}  # the data set's lm-eval task
LM_EVAL_CHECK = ROOT / "benchmarks" / "study_v2_lm_eval.json"  # its own file: a running study rewrites --out


def record_key(r: dict) -> tuple:
    """What identifies one of the study's runs: (task, arm, removed fraction, seed)."""
    return r["task"], r["arm"], r["removed_fraction"], r["seed"]


def run_folder(work: Path, task: str, arm: str, fraction: float, seed: int) -> Path:
    """The folder of one of the study's runs (its training resumes there; ``final/`` is its model)."""
    return work / f"{task}-{arm}-{fraction}-{seed}"


def lm_eval_check(records: list[dict], arms: list[str], args, path: Path = LM_EVAL_CHECK) -> list[dict]:
    """The listed arms' test side through lm-eval's own HFLM (one forward per choice) beside the packed scorer's
    outcomes in the study's records: the same documents, so the same accuracy and right / wrong per document are
    expected. Runs whose model folder is gone are skipped; checks already saved are kept."""
    checks = json.loads(path.read_text()) if path.is_file() else []
    for r in records:
        final = run_folder(args.work, *record_key(r)) / "final"
        seen = any(record_key(c) == record_key(r) for c in checks)
        if r["arm"] not in arms or seen or not final.is_dir():
            continue
        model, tokenizer = load_model(final)
        name = LM_EVAL_TASK[r["task"]]
        results = evaluate(model, tokenizer, [name], limit=args.test_limit, batch_size=args.eval_batch_size,
                           log_samples=True)
        theirs = ["1" if s["acc"] else "0" for s in sorted(results["samples"][name], key=lambda s: s["doc_id"])]
        same = sum(a == b for a, b in zip(theirs, r["correct"], strict=True))
        checks.append({"task": r["task"], "arm": r["arm"], "removed_fraction": r["removed_fraction"],
                       "seed": r["seed"], "n": len(theirs), "acc_packed": r["acc"],
                       "acc_lm_eval": round(theirs.count("1") / len(theirs), 4), "same_outcome": same})
        print(json.dumps(checks[-1]), flush=True)
        write_json(path, checks)
    return checks


def lm_eval_lines(path: Path = LM_EVAL_CHECK) -> list[str]:
    """The table of ``--lm-eval-check``: the packed scorer against lm-eval on the same models and documents."""
    if not path.is_file():
        return []
    lines = ["", f"The test side through lm-eval itself (`python scripts/study.py --lm-eval-check ARMS`, "
             f"`{shown_path(path, ROOT)}`; HFLM, one forward per choice) against the packed scorer above, "
             "on the same models and documents:", "",
             "| task | removed | arm | seed | n | packed scorer acc | lm-eval acc | same right / wrong |",
             "|---|---|---|---|---|---|---|---|"]
    for c in json.loads(path.read_text()):
        lines.append(f"| {c['task']} | {c['removed_fraction']:.0%} | {c['arm']} | {c['seed']} | {c['n']} | "
                     f"{c['acc_packed']:.3f} | {c['acc_lm_eval']:.3f} | {c['same_outcome']} of {c['n']} |")
    return lines
