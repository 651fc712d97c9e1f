"""The compute-matched study: trimllm's schedules against full-depth LoRA and one-shot pruning, on SmolLM2-135M.

    python scripts/study_v1.py                        # defaults below: about 75 minutes on a 2-core CPU
    python scripts/study_v1.py --tasks sciq --seeds 0,1 --budget-steps 48
    python scripts/study_v1.py --render-only          # re-write the BENCHMARKS.md section from benchmarks/study.json
    python scripts/study_v1.py --model smollm2-135m,gemma3-270m --out benchmarks/study_cuda.json \
        --section "Compute-matched study (CUDA)" --resume    # on a GPU; --resume skips the runs already in --out

Protocol ("No Train No Gain": every method gets the same compute). Each run trains for the same number of
optimizer steps (--budget-steps, batch --batch-size, LoRA r=8 on all linear layers) with a learning-rate schedule
that decays fully within each stage; progressive runs split the budget evenly over their stages. Scoring passes,
training and validation all count in ``train_seconds`` (the wall time of the whole `trimllm train` run, before the
final evaluation). Methods:

- ``none``: full-depth LoRA (the baseline);
- ``oneshot``: block_influence removes 25 % / 50 % of the blocks at once, then the same LoRA budget;
- ``progressive`` (trimllm's default): block_influence re-scored every stage, --stages removal stages to 25 % / 50 %;
- ``progressive+recovery``: the same removals in short stages (budget / (2 (stages + 1)) steps each), the rest of
  the budget on the final structure (``train.final_stage_steps``);
- ``trimllm`` (the paper): one attention or MLP half per stage chosen by the exact task_accuracy scan, as many
  stages as the budget allows at the progressive runs' steps per stage.

Every final model is evaluated with lm-eval on the domain's test split (--domain-limit documents) and the general
group (--general-limit documents per task). Saves benchmarks/study.json (one record per method x ratio x task x
seed), benchmarks/study.png and a section of BENCHMARKS.md. The JSON is re-written after every run, so an
interrupted study loses at most the run in progress and ``--resume`` continues it.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from _common import (
    ROOT,
    command_line,
    environment_line,
    parser,
    publish,
    shown_path,
    training_environment,
    write_json,
    write_section,
)

from trimllm.evaluation import domain_scores, evaluate
from trimllm.modeling import load_model
from trimllm.pipeline import run
from trimllm.validation import load_recipe

EVAL_TASK = {"sciq": "trimllm_sciq", "financial_phrasebank": "trimllm_fpb"}


def methods(budget: int, stages: int, layers: int) -> list[dict]:
    """(method, removed fraction, recipe overrides) of every run, all with ``budget`` training steps in total."""
    steps = budget // (stages + 1)

    def removals(fraction: float) -> list[str]:  # progressive: the blocks of `fraction` in `stages` stages
        blocks = int(round(fraction * layers))
        return ["schedule=progressive", "schedule.options.order=rescore",  # v0.1's progressive (it re-scored)
                f"stop.target_fraction={fraction}", f"schedule.options.per_stage={math.ceil(blocks / stages)}"]

    runs = [{"method": "none", "removed_fraction": 0.0,
             "overrides": ["schedule=none", f"train.steps_per_stage={budget}"]}]
    for fraction in (0.25, 0.5):
        runs.append({"method": "oneshot", "removed_fraction": fraction,
                     "overrides": ["schedule=oneshot", f"stop.target_fraction={fraction}",
                                   f"train.steps_per_stage={budget}"]})
        runs.append({"method": "progressive", "removed_fraction": fraction,
                     "overrides": [*removals(fraction), f"train.steps_per_stage={steps}"]})
    early = budget // (2 * (stages + 1))
    for fraction in (0.25, 0.5):  # the same removals, most of the budget spent on the final structure
        runs.append({"method": "progressive+recovery", "removed_fraction": fraction,
                     "overrides": [*removals(fraction), f"train.steps_per_stage={early}",
                                   f"train.final_stage_steps={budget - stages * early}"]})
    runs.append({"method": "trimllm", "removed_fraction": None,  # whatever `stages` halves amount to
                 "overrides": ["schedule=trimllm", "scoring.scorer=task_accuracy", "stop.target_fraction=null",
                               f"stop.max_modules={stages}", f"train.steps_per_stage={steps}"]})
    return runs


def run_one(spec: dict, model_name: str, task: str, seed: int, args, work: Path) -> dict:
    out = work / f"{task}-{spec['method']}-{spec['removed_fraction']}-{seed}"
    overrides = [f"model.name={model_name}", f"data.task={task}", f"data.seed={seed}", f"train.seed={seed}",
                 f"data.n_train={args.budget_steps * args.batch_size}", f"data.n_validation={args.n_validation}",
                 "data.n_calibration=16", f"data.max_length={args.max_length}", f"train.batch_size={args.batch_size}",
                 "train.warmup_ratio=0.1", "train.logging_steps=2", "train.save_steps=0", "scoring.scorer=block_influence",
                 "eval.tasks=[]", f"output_dir={out}", *spec["overrides"]]
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml", overrides)
    started = time.perf_counter()
    plan = run(recipe, overwrite=True)
    train_seconds = time.perf_counter() - started
    model, tokenizer = load_model(out / "final")
    domain = EVAL_TASK[task]
    results = evaluate(model, tokenizer, [domain], limit=args.domain_limit, batch_size=16)
    general = evaluate(model, tokenizer, ["general"], limit=args.general_limit, batch_size=16)
    final = plan["stages"][plan["final"]["stage"]]
    removed_units = sum(2 if m.startswith("block.") else 1 for m in final["removed"])
    record = {
        "model": model_name, "method": spec["method"],
        "removed_fraction": spec["removed_fraction"] if spec["removed_fraction"] is not None
        else round(removed_units / (2 * plan["num_layers"]), 3),
        "task": task, "seed": seed,
        "acc": results["results"][domain]["acc,none"], "acc_stderr": results["results"][domain]["acc_stderr,none"],
        "general_acc": domain_scores(general)["general"][0],
        "general_acc_stderr": _mean_stderr(general),
        "train_seconds": round(train_seconds, 1),
        "scoring_seconds": round(sum(s["seconds"]["scoring"] for s in plan["stages"]), 1),
        "blocks_kept": final["blocks_kept"], "params": final["params"], "params_original": plan["params_original"],
        "removed": final["removed"], "stages": len(plan["stages"]), "val_acc": final["val_acc"],
        "num_layers": plan["num_layers"],
        "inference_bound": round(plan["params_original"] / final["params"], 3),
    }
    print(json.dumps(record), flush=True)
    return record


def _mean_stderr(results: dict) -> float:
    """Stderr of the unweighted mean of the general tasks (independent tasks: sqrt(sum se^2) / n)."""
    errors = [r["acc_stderr,none"] for name, r in results["results"].items() if "acc_stderr,none" in r
              and name != "trimllm_general" and isinstance(r["acc_stderr,none"], float)]
    return math.sqrt(sum(e * e for e in errors)) / len(errors) if errors else float("nan")


def main() -> None:
    options = parser(__doc__, "study.json", "Compute-matched study (CPU)")
    options.set_defaults(model="smollm2-135m")  # one model, or several separated by commas
    options.add_argument("--tasks", default="sciq,financial_phrasebank")
    options.add_argument("--seeds", default="0")
    options.add_argument("--budget-steps", type=int, default=32)
    options.add_argument("--stages", type=int, default=3, help="removal stages of the progressive runs")
    options.add_argument("--batch-size", type=int, default=8)
    options.add_argument("--max-length", type=int, default=256)
    options.add_argument("--n-validation", type=int, default=64)
    options.add_argument("--domain-limit", type=int, default=200)
    options.add_argument("--general-limit", type=int, default=30)
    options.add_argument("--resume", action="store_true", help="keep the runs already in --out and do the rest")
    args = options.parse_args()
    if args.render_only:
        figures = json.loads(args.out.read_text())
        write_section(ROOT / "BENCHMARKS.md", args.section, markdown(figures))
        return

    previous = _previous(args)
    records = previous.get("records", [])
    started = time.time() - 60 * previous.get("setup", {}).get("minutes", 0)
    env = None
    for model_name in args.model.split(","):
        model, _ = load_model(model_name)
        layers = model.config.num_hidden_layers
        env = env or training_environment(model)
        del model
        with tempfile.TemporaryDirectory(prefix="trimllm-study-") as work:
            for task in args.tasks.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    for spec in methods(args.budget_steps, args.stages, layers):
                        if any(_key(r) == (model_name, spec["method"], spec["removed_fraction"], task, seed)
                               for r in records):
                            continue  # done by the run being resumed
                        records.append(run_one(spec, model_name, task, seed, args, Path(work)))
                        write_json(args.out, _figures(args, records, env, started))
    figures = _figures(args, records, env, started)
    plot(records, args.out.with_suffix(".png"))
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures))


def _key(record: dict) -> tuple:
    """What identifies a run; trimllm's removed fraction is measured, so it is keyed by its method alone."""
    fraction = None if record["method"] == "trimllm" else record["removed_fraction"]
    return _model(record), record["method"], fraction, record["task"], record["seed"]


def _previous(args) -> dict:
    """With --resume, the figures already in --out (refused if they were made with other sizes)."""
    if not (args.resume and args.out.is_file()):
        return {}
    previous = json.loads(args.out.read_text())
    sizes = ("budget_steps", "stages", "batch_size", "max_length", "n_validation", "domain_limit", "general_limit")
    differ = {k: (previous["setup"].get(k), getattr(args, k)) for k in sizes if previous["setup"].get(k) != getattr(args, k)}
    if differ:
        raise SystemExit(f"--resume: {args.out} was made with other sizes (saved, given): {differ}; "
                         "give the same options or another --out.")
    return previous


def _figures(args, records: list[dict], env: dict, started: float) -> dict:
    not_setup = ("out", "render_only", "resume", "section")
    return {"records": records, "setup": {
        **{k: v for k, v in vars(args).items() if k not in not_setup}, **env,
        "minutes": round((time.time() - started) / 60, 1),
        "command": command_line("study_v1.py", args, skip=not_setup),
        "figures": shown_path(args.out, ROOT),
    }}


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(records)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    markers = {"none": "s", "oneshot": "v", "progressive": "o", "progressive+recovery": "D", "trimllm": "*"}
    for ax, ((model, task), group) in zip(axes[0], groups.items(), strict=True):
        for method, marker in markers.items():
            rows = sorted((r for r in group if r["method"] == method), key=lambda r: r["removed_fraction"])
            if rows:
                x = [r["removed_fraction"] for r in rows]
                ax.errorbar(x, [r["acc"] for r in rows], yerr=[r["acc_stderr"] for r in rows], marker=marker,
                            label=f"{method} (domain)", capsize=3)
                ax.plot(x, [r["general_acc"] for r in rows], marker=marker, linestyle=":", label=f"{method} (general)")
        ax.set(title=f"{model}: {task}", xlabel="fraction of the model removed (blocks, or halves / 2)", ylabel="accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(figures: dict) -> str:
    s, records = figures["setup"], figures["records"]
    figures_file = s.get("figures", "benchmarks/study.json")
    lines = [
        "Made by study v1, now `scripts/study_v1.py` (named `scripts/study.py` up to commit f4fb6e0, which the command "
        "below names); superseded by study v2 below, whose budget can tell methods apart.",
        "",
        f"Command: `{s['command']}` ({environment_line(s)}, peft {s['peft']}, lm-eval {s['lm_eval']}; "
        f"{s['minutes']} min in all). Figures in `{figures_file}`, plot `{Path(figures_file).with_suffix('.png')}`.",
        "",
        f"Every run: {s['budget_steps']} LoRA steps of batch {s['batch_size']} in total (progressive: split over "
        f"{s['stages']} removal stages + the full-depth stage 0; trimllm: as many one-half stages), cosine decay to 0 "
        f"in each stage. Domain accuracy on {s['domain_limit']} test documents, general = mean of the 6 general tasks "
        f"at {s['general_limit']} documents each (± = stderr). Train s = the whole run: scoring, training, "
        "validation. Bound = params_original / params (the inference speedup if time follows the weights read; "
        "measured speedups relative to it are in the inference section).",
        "",
        "| model | task | method | removed | seed | blocks kept | params | domain acc | general acc | train s | scoring s | bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {_model(r)} | {r['task']} | {r['method']} | {r['removed_fraction']:.0%} | {r['seed']} | {r['blocks_kept']} | "
            f"{r['params'] / 1e6:.1f}M | {r['acc']:.3f} ± {r['acc_stderr']:.3f} | {r['general_acc']:.3f} ± "
            f"{r['general_acc_stderr']:.3f} | {r['train_seconds']:.0f} | {r['scoring_seconds']:.0f} | {r['inference_bound']}x |")
    if s.get("notes"):
        lines += ["", s["notes"]]
    lines += ["", "Targets (mean over seeds):", ""]
    for (model, task), group in _groups(records).items():
        lines += _targets(f"{model}, {task}", group)
    return "\n".join(lines)


def _model(record: dict) -> str:
    return record.get("model", "smollm2-135m")  # the first CPU records predate the field (SmolLM2 only)


def _groups(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The records of each (model, task), in order of first appearance."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((_model(r), r["task"]), []).append(r)
    return groups


def _targets(task: str, rows: list[dict]) -> list[str]:
    def acc(method, fraction):
        values = [r["acc"] for r in rows if r["method"] == method and r["removed_fraction"] == fraction]
        return statistics.mean(values) if values else None

    base, o50 = acc("none", 0.0), acc("oneshot", 0.5)
    out = []
    for method in ("progressive", "progressive+recovery"):
        p50, p25 = acc(method, 0.5), acc(method, 0.25)
        if None not in (base, p50, o50):
            out.append(f"- {task}, 50 % removed: {method} {p50:.3f} vs full depth {base:.3f} "
                       f"({'within' if p50 >= base - 0.01 else 'NOT within'} 1 point) and vs oneshot {o50:.3f} "
                       f"({'>=' if p50 >= o50 + 0.03 else 'NOT >='} 3 points above)")
        if None not in (base, p25):
            out.append(f"- {task}, 25 % removed: {method} {p25:.3f} vs full depth {base:.3f} "
                       f"({'met' if p25 >= base else 'NOT met'})")
    trim = [r for r in rows if r["method"] == "trimllm"]
    prog = [r for r in rows if r["method"] == "progressive" and r["removed_fraction"] == 0.5]
    if trim and prog:
        per_half = statistics.mean(r["train_seconds"] / max(1, r["stages"]) for r in trim)
        halves = trim[0]["num_layers"]  # 50 % of the blocks = as many halves as the model has blocks
        estimate = per_half * (halves + 1)  # one half per stage, + stage 0
        ratio = statistics.mean(r["train_seconds"] for r in prog) / estimate
        out.append(f"- {task}, time to a 50 %-depth model: progressive {statistics.mean(r['train_seconds'] for r in prog):.0f} s; "
                   f"the paper-faithful schedule, extrapolated from its measured {per_half:.0f} s per one-half stage "
                   f"to {halves} halves, about {estimate:.0f} s: ratio {ratio:.2f} (target <= 0.2; accuracy of that "
                   "extrapolated model not measured)")
    return out


if __name__ == "__main__":
    main()
