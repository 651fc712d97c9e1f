"""Distillation's cost: a distillation step against a cross-entropy step, side by side, on a pruned student.

    python scripts/bench_distill.py               # SmolLM2-135M, 15 of 30 blocks removed; about 10 minutes on 2 CPU cores

Every arm trains the same pruned student (blocks removed in block_influence order) with trimllm's own stage trainer
(:func:`trimllm.training.train_stage`, as in ``bench_train.py``) on the same examples for the same steps; the arms
alternate over ``--repeats`` rounds (median of each). The distillation arms add the full-depth model as teacher
(``distill``: the KL at the answer tokens, at every token, and with the cosine term on the kept blocks). Reported:
seconds per optimizer step and the ratio to CE, the teacher's forward seconds per step, and peak memory.

Saves ``distillation`` in benchmarks/train.json and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import copy
import json
import statistics

from _common import ROOT, command_line, environment, environment_line, write_json, write_section
from bench_train import removal_order, timed_stage, training_parser

from trimllm.config import Recipe
from trimllm.data import train_side_splits
from trimllm.modeling import load_model
from trimllm.prompts import mc_item
from trimllm.sft import sft_examples
from trimllm.surgery import drop_blocks

# The arms: the recipe's distill settings (None = cross-entropy only, the baseline).
ARMS = {"ce": None, "kd answer": {"tokens": "answer"}, "kd all": {"tokens": "all"},
        "kd all + hidden": {"tokens": "all", "hidden_weight": 0.5}}


def main() -> None:
    options = training_parser(__doc__, "Training throughput: distillation", steps=8)
    options.add_argument("--repeats", type=int, default=2, help="alternating rounds over the arms")
    options.add_argument("--distill-removed", type=int, default=15, help="blocks removed from the student")
    args = options.parse_args()
    if args.render_only:
        write_section(ROOT / "BENCHMARKS.md", args.section, distillation_markdown(json.loads(args.out.read_text())))
        return
    distillation(args)


def distillation(args) -> None:
    """CE vs distillation steps side by side: the same pruned student, examples and steps; arms alternate."""
    model, tokenizer = load_model(args.model, device=args.device)
    splits = train_side_splits(args.data, 16, 16, 0, args.n_train)
    examples = sft_examples(tokenizer, [mc_item(args.data, r) for r in splits["train"]], args.max_length)
    student = copy.deepcopy(model)
    drop_blocks(student, removal_order(model, tokenizer, args.data, splits["calibration"], args.max_length)[
        : args.distill_removed])
    runs = {arm: [] for arm in ARMS}
    for repeat in range(args.repeats):  # alternate, so drifts of the machine hit every arm alike
        for arm, settings in ARMS.items():
            recipe = Recipe()
            recipe.train.seed, recipe.train.steps_per_stage = repeat, args.warmup + args.steps
            recipe.train.batch_size, recipe.train.save_steps, recipe.train.logging_steps = args.batch_size, 0, 10_000
            for key, value in (settings or {}).items():
                setattr(recipe.distill, key, value)
            _, seconds, stats = timed_stage(student, tokenizer, examples, recipe, model if settings else None)
            runs[arm].append({"s_per_step": statistics.mean(seconds[args.warmup:]), "peak_memory_mb": stats.peak_memory_mb,
                              "teacher_s_per_step": stats.teacher_seconds / len(seconds)})
            print(arm, runs[arm][-1], flush=True)
    median = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in runs.items()}
    figures = json.loads(args.out.read_text()) if args.out.is_file() else {}
    figures["distillation"] = {arm: {**{k: round(v, 3) for k, v in m.items()},
                                     "step_ratio": round(m["s_per_step"] / median["ce"]["s_per_step"], 3)}
                               for arm, m in median.items()}
    figures["distillation_setup"] = {
        "model": args.model, "data": args.data, "examples": len(examples), "batch_size": args.batch_size,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "removed": args.distill_removed,
        "student_blocks": student.config.num_hidden_layers, **environment(model),
        "command": command_line("bench_distill.py", args),
    }
    write_json(args.out, figures)
    write_section(ROOT / "BENCHMARKS.md", args.section, distillation_markdown(figures))


def distillation_markdown(f: dict) -> str:
    s = f["distillation_setup"]
    lines = [
        f"Command: `{s['command']}` ({environment_line(s)}; nothing else running). Figures in `benchmarks/train.json` "
        "(`distillation`).",
        "",
        f"LoRA fine-tuning of {s['model']} with {s['removed']} of its blocks removed ({s['student_blocks']} left, "
        f"block_influence order) on {s['examples']} {s['data']} train-side examples, batch {s['batch_size']}, mean of "
        f"{s['steps']} steps after {s['warmup']} warm-up steps, median of {s['repeats']} alternating rounds. Teacher: "
        "the full-depth model, eval mode, no gradients, on the same batch in the same step. Peak memory: the "
        "process's resident peak during the stage (on CPU it includes what the allocator kept from earlier arms).",
        "",
        "| arm | s / step | vs CE | teacher forward s / step | peak memory MB |",
        "|---|---|---|---|---|",
    ]
    for arm, e in f["distillation"].items():
        lines.append(f"| {arm} | {e['s_per_step']} | {e['step_ratio']}x | {e['teacher_s_per_step']} | "
                     f"{e['peak_memory_mb']:,.0f} |")
    worst = max(e["step_ratio"] for arm, e in f["distillation"].items() if arm != "ce")
    why = ("" if worst <= 1.4 else
           " Why: the teacher has the full depth, so its forward alone (no backward) costs a large share of a pruned "
           "student's forward + backward (see the teacher column); with `tokens: all` both LM heads also run on every "
           "position. To try: compute the stage-0 teacher's top-k logits once per example and reuse them in every "
           "stage (the teacher does not change between stages), or run the teacher in lower precision.")
    return "\n".join([*lines, "", f"Target: a distillation step <= 1.4x a CE step: {'met' if worst <= 1.4 else 'NOT met'} "
                       f"(worst arm {worst}x).{why}"])


if __name__ == "__main__":
    main()
