"""The study that decides the default recipe (v2): at a real budget, which way of removing 25 % / 50 % of
SmolLM2-135M's blocks keeps the most domain accuracy, with paired tests on whole test sides.

    python scripts/study.py                                # everything below: hours on a 2-core CPU, resumable
    python scripts/study.py --tasks financial_phrasebank --seeds 0 --fractions 0.5
    python scripts/study.py --render-only                  # re-write the BENCHMARKS.md section from the JSON
    python scripts/study.py --lm-eval-check oneshot-ft-r64 # those arms' test sides through lm-eval itself

Budget: one epoch of batch 16 over the train side's first ``n_train`` examples (Financial PhraseBank 1500 =
94 steps, SciQ 1000 = 63 steps), LoRA r 16 on every linear layer, lr 2e-4, 10 % warmup and cosine decay in every
stage. Every arm trains its pruned model for exactly those steps on those examples. Arms:

- ``none``: full-depth LoRA; its fine-tuned model is the teacher of the arms below that distil or start from it;
- ``oneshot-ce``: block influence on the base model, drop once, LoRA with cross-entropy (ShortGPT / Gromov et al.:
  the recipe to beat);
- ``oneshot-kd``: the same + distillation from the ``none`` model (Minitron: KL to the teacher at the answer tokens,
  alpha 0.5, temperature 1);
- ``progressive-fixed-kd``: trimllm's progressive schedule from the ``none`` model (its stage 0, hence
  ``train.stage0_steps=0``): blocks scored once on it and removed in that order in 3 stages (``schedule.options.order:
  fixed``, Lu et al. 2024), distilled from it; the steps split B//3, B//3, rest;
- ``progressive-rescore-ce``: the same stages re-scored every stage, cross-entropy (v0.1's default, for the record);
- ``oneshot-ft-ce``: block influence on the ``none`` model, drop once, cross-entropy (does the gain come from the
  teacher or from pruning a domain-tuned model?);
- ``oneshot-ft-partial``: the same, but partial-layer fine-tuning instead of LoRA (Lu et al. 2024: the top quarter
  of the kept blocks and the LM head trained in full, lr 5e-5; ``freeze.mode: bottom``);
- ``oneshot-ft-r64`` / ``-lr`` / ``-r64-lr``: the same with LoRA rank 64 (alpha 128) / 3x the lr (6e-4) / both;
- ``oneshot-kd-all``: ``oneshot-kd`` with the KL at every position of prompt + answer (``distill.tokens: all``);
  ``oneshot-kd-hidden``: ``oneshot-kd`` plus Minitron's block-output cosine loss (``distill.hidden_weight: 1``).

Wall time (``train_seconds``): each arm's run (scoring, training, validation, teacher forwards) + the ``none``
model's training for the arms using it. Test accuracy: every test-side document, scored by trimllm's packed
multiple-choice scorer (tests/integration/test_eval_cli.py shows it gives lm-eval's per-document log-likelihoods),
per-item outcomes saved for the paired tests (exact McNemar and a paired bootstrap of the difference, 10,000
resamples, seeds pooled). General: lm-eval's ``general`` group at --general-limit documents per task. Records are
saved after every run and runs resume: a record already in --out is skipped, a run killed midway continues from its
stage checkpoints in --work.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from _common import (
    ROOT,
    bootstrap_diff,
    command_line,
    environment_line,
    mcnemar_exact,
    parser,
    publish,
    shown_path,
    training_environment,
    write_json,
    write_section,
)
from _study_check import lm_eval_check, lm_eval_lines, record_key, run_folder

from trimllm.data import load_side
from trimllm.evaluation import domain_scores, evaluate
from trimllm.modeling import load_model
from trimllm.multiple_choice import mc_correct
from trimllm.pipeline import run
from trimllm.prompts import mc_item
from trimllm.validation import load_recipe

N_TRAIN = {"financial_phrasebank": 1500, "sciq": 1000, "medmcqa": 1000}  # train-side examples: one epoch each
MAX_LENGTH = {"financial_phrasebank": 256, "sciq": 512, "medmcqa": 256}  # SciQ's support paragraphs run to ~400 tokens
LEVERS = {  # oneshot-ft-<lever>: drop once from the `none` model, then train the pruned model with these overrides
    "ce": [],
    "partial": ["lora.method=full", "freeze.mode=bottom", "freeze.fraction=0.75", "train.lr=5e-5"],  # Lu et al. 2024
    "r64": ["lora.r=64", "lora.alpha=128"],  # a larger adapter (4x the parameters)
    "lr": ["train.lr=6e-4"],  # a larger step: 3x the study's LoRA learning rate
    "r64-lr": ["lora.r=64", "lora.alpha=128", "train.lr=6e-4"],
}
DISTILL = {  # oneshot-<variant>: drop once, distil from the `none` model at the answer tokens, with these overrides
    "kd": [],
    "kd-all": ["distill.tokens=all"],  # the KL at every position of prompt + answer
    "kd-hidden": ["distill.hidden_weight=1.0"],  # + Minitron's block-output cosine term
}
ARMS = ("none", "oneshot-ce", "oneshot-kd", "progressive-fixed-kd", "progressive-rescore-ce",
        *(f"oneshot-ft-{lever}" for lever in LEVERS), "oneshot-kd-all", "oneshot-kd-hidden")
STAGES = 3  # removal stages of the progressive arms
COMPARISONS = (  # (a, b): is a better than b
    ("oneshot-kd", "oneshot-ce"), ("progressive-fixed-kd", "oneshot-ce"), ("progressive-fixed-kd", "oneshot-kd"),
    ("progressive-rescore-ce", "oneshot-ce"), ("oneshot-ft-ce", "oneshot-ce"), ("oneshot-kd", "none"),
    ("progressive-fixed-kd", "none"), ("oneshot-ce", "none"), ("oneshot-ft-ce", "none"),
    ("oneshot-ft-partial", "oneshot-ft-ce"), ("oneshot-ft-r64", "oneshot-ft-ce"), ("oneshot-ft-lr", "oneshot-ft-ce"),
    ("oneshot-ft-r64", "oneshot-ce"), ("oneshot-ft-lr", "oneshot-ce"), ("oneshot-ft-lr", "oneshot-ft-r64"),
    ("oneshot-ft-r64", "none"), ("oneshot-ft-lr", "none"), ("oneshot-ft-r64-lr", "oneshot-ft-r64"),
    ("oneshot-ft-r64-lr", "oneshot-ce"), ("oneshot-ft-r64-lr", "none"), ("oneshot-kd-all", "oneshot-kd"),
    ("oneshot-kd-all", "oneshot-ce"), ("oneshot-kd-hidden", "oneshot-kd"), ("oneshot-kd-hidden", "oneshot-ce"),
)


def n_train(task: str, args) -> int:
    return min(N_TRAIN[task], args.n_train_cap or N_TRAIN[task])


def budget_steps(task: str, args) -> int:
    """One epoch over the task's training examples."""
    return math.ceil(n_train(task, args) / args.batch_size)


def arm_overrides(arm: str, fraction: float, steps: int, layers: int, teacher: str | None) -> list[str]:
    """The recipe overrides of one arm: ``steps`` optimizer steps on the pruned model, ``teacher`` = the ``none``
    arm's fine-tuned model (``final/``) for the arms that distil from it or start from it."""
    if arm == "none":
        return ["schedule=none", f"train.steps_per_stage={steps}"]
    oneshot = ["schedule=oneshot", f"stop.target_fraction={fraction}", f"train.steps_per_stage={steps}"]
    kd = ["distill={}", "distill.alpha=0.5", "distill.temperature=1.0", "distill.tokens=answer"]
    if arm == "oneshot-ce":
        return oneshot
    if (variant := arm.removeprefix("oneshot-")) in DISTILL:
        return [*oneshot, *kd, f"distill.teacher={teacher}", *DISTILL[variant]]
    if arm.startswith("oneshot-ft-"):
        return [f"model.name={teacher}", *oneshot, *LEVERS[arm.removeprefix("oneshot-ft-")]]
    blocks = int(round(fraction * layers))
    progressive = [f"model.name={teacher}", "schedule=progressive", f"stop.target_fraction={fraction}",
                   f"schedule.options.per_stage={math.ceil(blocks / STAGES)}", "train.stage0_steps=0",
                   f"train.steps_per_stage={steps // STAGES}",
                   f"train.final_stage_steps={steps - (STAGES - 1) * (steps // STAGES)}"]
    if arm == "progressive-fixed-kd":
        return [*progressive, "schedule.options.order=fixed", *kd, "distill.teacher=stage0"]
    if arm == "progressive-rescore-ce":
        return [*progressive, "schedule.options.order=rescore"]
    raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")


def uses_teacher(arm: str) -> bool:
    return arm not in ("none", "oneshot-ce")


def train_arm(arm: str, fraction: float, task: str, seed: int, args, work: Path, layers: int,
              teacher: Path | None, overrides: list[str] | None = None) -> tuple[Path, dict]:
    """Run (or resume, or find finished) one arm's training; returns its run folder and plan (``overrides``: study
    v3's arms' own)."""
    out = run_folder(work, task, arm, fraction, seed)
    steps = budget_steps(task, args)
    overrides = [
        f"model.name={args.model}", f"data.task={task}", f"data.seed={seed}", f"train.seed={seed}",
        f"data.n_train={n_train(task, args)}", f"data.n_validation={args.n_validation}", "data.n_calibration=64",
        f"data.max_length={MAX_LENGTH[task]}", f"train.batch_size={args.batch_size}", "train.grad_accum=1",
        "train.lr=2e-4", "train.warmup_ratio=0.1", "train.logging_steps=10", "train.save_steps=20",
        "lora.r=16", "lora.alpha=32", "lora.dropout=0.05", "scoring.scorer=block_influence",
        "scoring.batch_size=8", "stop.accuracy_floor=null", "eval.tasks=[]", f"output_dir={out}",
        *(arm_overrides(arm, fraction, steps, layers, teacher and str(teacher)) if overrides is None else overrides)]
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml", overrides)
    return out, run(recipe)


def run_seconds(plan: dict) -> float:
    """Scoring + training (teacher forwards included) + validation of every stage of a run."""
    return sum(sum(stage["seconds"].values()) for stage in plan["stages"])


def test_outcomes(model, tokenizer, task: str, batch_size: int, limit: int | None = None) -> list[bool]:
    """Right or wrong on every test-side document (the first ``limit``), as lm-eval's acc scores them."""
    items = [mc_item(task, record) for record in load_side(task, "test")[:limit]]
    return mc_correct(model, tokenizer, items, batch_size, 4096)


def evaluate_arm(arm: str, fraction: float, task: str, seed: int, out: Path, plan: dict, extra_seconds: float,
                 args) -> dict:
    model, tokenizer = load_model(out / "final")
    started = time.perf_counter()
    correct = test_outcomes(model, tokenizer, task, args.eval_batch_size, args.test_limit)
    test_seconds = time.perf_counter() - started
    general = evaluate(model, tokenizer, ["general"], limit=args.general_limit, batch_size=args.eval_batch_size)
    n, acc = len(correct), sum(correct) / len(correct)
    final = plan["stages"][plan["final"]["stage"]]
    record = {
        "model": args.model, "task": task, "arm": arm, "removed_fraction": fraction, "seed": seed,
        "acc": round(acc, 4), "acc_stderr": round(math.sqrt(acc * (1 - acc) / (n - 1)), 4), "n_test": n,
        "general_acc": round(domain_scores(general)["general"][0], 4),
        "train_seconds": round(run_seconds(plan) + extra_seconds, 1),
        "teacher_seconds": round(extra_seconds, 1),  # the `none` arm's training, counted for the arms using it
        "test_seconds": round(test_seconds, 1),
        "blocks_kept": final["blocks_kept"], "removed": final["removed"], "params": final["params"],
        "stages": len(plan["stages"]), "val_acc": final["val_acc"],
        "correct": "".join("1" if c else "0" for c in correct),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "correct"}), flush=True)
    return record


def comparisons(records: list[dict], resamples=10_000, pairs_of_arms=COMPARISONS, full_depth=("none",)) -> list[dict]:
    """Every (a, b) of ``pairs_of_arms`` at every task x fraction where both ran on the same seeds: paired over
    the test items of every shared seed (``full_depth`` arms are compared at each fraction)."""
    def outcome(task, arm, fraction, seed):
        for r in records:
            if (r["task"], r["arm"], r["seed"]) == (task, arm, seed) and r["removed_fraction"] == (
                    0.0 if arm in full_depth else fraction):
                return [c == "1" for c in r["correct"]]
        return None

    rows = []
    tasks = list(dict.fromkeys(r["task"] for r in records))
    fractions = sorted({r["removed_fraction"] for r in records if r["arm"] not in full_depth})
    for task in tasks:
        seeds = sorted({r["seed"] for r in records if r["task"] == task})
        for fraction in fractions:
            for a, b in pairs_of_arms:
                pairs = [(outcome(task, a, fraction, s), outcome(task, b, fraction, s)) for s in seeds]
                pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
                if not pairs:
                    continue
                xa = [v for x, _ in pairs for v in x]
                xb = [v for _, y in pairs for v in y]
                low, high = bootstrap_diff(xa, xb, resamples)
                rows.append({"task": task, "removed_fraction": fraction, "a": a, "b": b, "seeds": len(pairs),
                             "diff": round((sum(xa) - sum(xb)) / len(xa), 4), "ci_low": round(low, 4),
                             "ci_high": round(high, 4), "p": mcnemar_exact(xa, xb)})
    return rows


def default_arm() -> str | None:
    """The arm of recipes/finance.yaml (all domain recipes share the method); None since study v3 (none is it)."""
    recipe = load_recipe(ROOT / "recipes" / "finance.yaml", [])
    kd = "kd" if recipe.distill is not None else "ce"
    if recipe.schedule.name == "oneshot" and (recipe.pruned.r or recipe.pruned.lr):
        return None
    if recipe.schedule.name == "tuned_oneshot":  # = the oneshot-ft arm: oneshot on the none arm's tuned model
        levers = [name for name, on in (("r64", recipe.pruned.r == 64),  # the pruned model's adapter rank
                                        ("lr", (recipe.pruned.lr or 0) > recipe.train.lr)) if on]
        return f"oneshot-ft-{'-'.join(levers or [kd])}"
    if recipe.schedule.name == "progressive":
        return f"progressive-{recipe.schedule.options['order']}-{kd}"
    return recipe.schedule.name if recipe.schedule.name == "none" else f"{recipe.schedule.name}-{kd}"


def render(args) -> None:
    """--render-only: measures nothing; the comparisons and the shipped arm are re-derived from the records."""
    figures = json.loads(args.out.read_text())
    figures.update(comparisons=comparisons(figures["records"]), default_arm=default_arm())
    write_json(args.out, figures)
    write_section(ROOT / "BENCHMARKS.md", args.section, markdown(figures))


def main() -> None:
    options = parser(__doc__, "study_v2.json", "Study v2: distillation and a stable schedule (CPU)")
    options.add_argument("--tasks", default="financial_phrasebank,sciq")
    options.add_argument("--seeds", default="0,1", help="seeds, each on every task listed in --seeds-tasks")
    options.add_argument("--seed1-tasks", default="financial_phrasebank", help="tasks that also run seeds > 0")
    options.add_argument("--fractions", default="0.5,0.25")
    options.add_argument("--arms", default=",".join(ARMS))
    options.add_argument("--batch-size", type=int, default=16)
    options.add_argument("--eval-batch-size", type=int, default=16)
    options.add_argument("--n-validation", type=int, default=100)
    options.add_argument("--general-limit", type=int, default=100)
    options.add_argument("--n-train-cap", type=int, default=None, help="fewer training examples (a quick try)")
    options.add_argument("--test-limit", type=int, default=None, help="fewer test documents (a quick try)")
    options.add_argument("--lm-eval-check", default=None, metavar="ARMS",
                         help="instead of training: score these arms' finished runs through lm-eval (comma list)")
    options.add_argument("--work", type=Path, default=ROOT / "runs" / "study_v2",
                         help="run folders (kept, so that a killed study resumes)")
    args = options.parse_args()
    if args.render_only:
        render(args)
        return
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    records = previous.get("records", [])
    if args.lm_eval_check:
        lm_eval_check(records, args.lm_eval_check.split(","), args)
        render(args)
        return
    minutes, started = previous.get("setup", {}).get("minutes", 0.0), time.time()
    model, _ = load_model(args.model)
    layers, env = model.config.num_hidden_layers, training_environment(model)
    del model

    def save():
        figures = _figures(args, records, env, minutes + (time.time() - started) / 60)
        write_json(args.out, figures)
        return figures

    for seed in (int(s) for s in args.seeds.split(",")):
        for task in args.tasks.split(","):
            if seed > 0 and task not in args.seed1_tasks.split(","):
                continue
            teacher, teacher_seconds = None, 0.0
            for fraction in (float(f) for f in args.fractions.split(",")):
                for arm in args.arms.split(","):
                    key = (task, arm, 0.0 if arm == "none" else fraction, seed)
                    if any(record_key(r) == key for r in records):
                        continue
                    if uses_teacher(arm) and teacher is None:  # `none` evaluated before: its run resumes as done
                        out, plan = train_arm("none", 0.0, task, seed, args, args.work, layers, None)
                        teacher, teacher_seconds = out / "final", run_seconds(plan)
                    out, plan = train_arm(arm, key[2], task, seed, args, args.work, layers, teacher)
                    if arm == "none":
                        teacher, teacher_seconds = out / "final", run_seconds(plan)
                    extra = teacher_seconds if uses_teacher(arm) else 0.0
                    records.append(evaluate_arm(arm, key[2], task, seed, out, plan, extra, args))
                    save()
    figures = save()
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures))


def _figures(args, records: list[dict], env: dict, minutes: float) -> dict:
    not_setup = ("out", "render_only", "section", "work", "lm_eval_check")
    return {
        "records": records, "comparisons": comparisons(records), "default_arm": default_arm(),
        "setup": {**{k: v for k, v in vars(args).items() if k not in not_setup}, **env, "n_train": N_TRAIN,
                  "max_length": MAX_LENGTH, "minutes": round(minutes, 1),
                  "command": command_line("study.py", args, skip=not_setup),
                  "figures": shown_path(args.out, ROOT)},
    }


STATUS = ROOT / "benchmarks" / "study_v2_status.md"  # hand-written: what is run, the decision, each target


def markdown(figures: dict) -> str:
    s, records = figures["setup"], figures["records"]
    status = [STATUS.read_text().strip(), ""] if STATUS.is_file() else []
    lines = [*status,
        f"Command: `{s['command']}` ({environment_line(s)}, peft {s['peft']}, lm-eval {s['lm_eval']}; "
        f"{s['minutes']} min in all, resumed runs summed). Figures in `{s['figures']}`.",
        "",
        f"Budget per arm: one epoch of batch {s['batch_size']} over the first {s['n_train']['financial_phrasebank']} "
        f"(Financial PhraseBank) / {s['n_train']['sciq']} (SciQ) train-side examples on the pruned model; arms "
        "marked † also use the `none` model (its training time is in their train s). Domain accuracy on the whole "
        f"test side (± stderr); general = mean of lm-eval's general group at {s['general_limit']} documents per "
        "task. Train s = scoring + training (teacher forwards included) + validation; not from a quiet machine "
        "(other work shared the 2 cores), so compare them within a row group only roughly.",
        "",
        "| task | removed | arm | seed | blocks kept | domain acc | general acc | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {arm: i for i, arm in enumerate(ARMS)}
    for r in sorted(records, key=lambda r: (r["task"], r["removed_fraction"], order.get(r["arm"], 99), r["seed"])):
        lines.append(f"| {r['task']} | {r['removed_fraction']:.0%} | {r['arm']}{' †' * uses_teacher(r['arm'])} | "
                     f"{r['seed']} | {r['blocks_kept']} | {r['acc']:.3f} ± {r['acc_stderr']:.3f} | "
                     f"{r['general_acc']:.3f} | {r['train_seconds']:.0f} |")
    lines += ["", "Paired differences (a − b over the same test items, seeds pooled; 95 % paired-bootstrap interval, "
              "exact McNemar p):", "",
              "| task | removed | a | b | seeds | diff | 95 % CI | p |", "|---|---|---|---|---|---|---|---|"]
    for c in figures["comparisons"]:
        lines.append(f"| {c['task']} | {c['removed_fraction']:.0%} | {c['a']} | {c['b']} | {c['seeds']} | "
                     f"{c['diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['p']:.3g} |")
    lines += ["", f"The shipped recipes use `{figures['default_arm']}`." if figures["default_arm"] else
              "The shipped recipes use none of these arms since study v3 (its section).", *lm_eval_lines()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
