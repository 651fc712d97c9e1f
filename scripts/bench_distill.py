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

import torch
from _common import (
    ROOT,
    TimingNoise,
    command_line,
    environment,
    environment_line,
    timing_line,
    write_json,
    write_section,
)
from bench_train import removal_order, timed_stage, training_parser

from trimllm.config import Recipe
from trimllm.data import train_side_splits
from trimllm.modeling import load_model
from trimllm.prompts import mc_item
from trimllm.sft import sft_examples
from trimllm.surgery import drop_blocks
from trimllm.timing import ratio_columns, round_ratios, with_range

# The arms: the recipe's distill settings (None = cross-entropy only, the baseline).
ARMS = {"ce": None, "kd answer": {"tokens": "answer"},
        "kd answer, bf16 teacher": {"tokens": "answer", "teacher_dtype": "bfloat16"},
        "kd all": {"tokens": "all"}, "kd all + hidden": {"tokens": "all", "hidden_weight": 0.5}}


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
    # the teacher as the pipeline loads it for distill.teacher_dtype (auto = the model's own dtype)
    teachers = {"auto": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    runs = {arm: [] for arm in ARMS}
    noise = TimingNoise().start()
    for repeat in range(args.repeats):  # alternate, so drifts of the machine hit every arm alike
        for arm, settings in ARMS.items():
            recipe = Recipe()
            recipe.train.seed, recipe.train.steps_per_stage = repeat, args.warmup + args.steps
            recipe.train.batch_size, recipe.train.save_steps, recipe.train.logging_steps = args.batch_size, 0, 10_000
            for key, value in (settings or {}).items():
                setattr(recipe.distill, key, value)
            teacher = teachers[recipe.distill.teacher_dtype] if settings else None
            _, seconds, stats = timed_stage(student, tokenizer, examples, recipe, teacher)
            runs[arm].append({"s_per_step": statistics.mean(seconds[args.warmup:]), "peak_memory_mb": stats.peak_memory_mb,
                              "teacher_s_per_step": stats.teacher_seconds / len(seconds)})
            print(arm, runs[arm][-1], flush=True)
    noise = noise.verdict({f"{arm} steps/s": [1 / r["s_per_step"] for r in rs] for arm, rs in runs.items()})
    fidelity = teacher_rounding(model, teachers["bfloat16"], tokenizer, examples[:32])
    figures = json.loads(args.out.read_text()) if args.out.is_file() else {}
    figures["distillation"] = summarize(runs)
    figures["distillation_noise"] = noise
    figures["distillation_setup"] = {
        "model": args.model, "data": args.data, "examples": len(examples), "batch_size": args.batch_size,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "removed": args.distill_removed,
        "student_blocks": student.config.num_hidden_layers, "bf16_teacher": fidelity, **environment(model),
        "command": command_line("bench_distill.py", args),
    }
    write_json(args.out, figures)
    write_section(ROOT / "BENCHMARKS.md", args.section, distillation_markdown(figures))


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Each arm's median over the rounds, its step ratio to CE (the median of the per-round ratios: each round's
    arms ran back to back) with its range, and the range of its seconds per step."""
    median = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in runs.items()}
    return {arm: {**{k: round(v, 3) for k, v in m.items()},
                  "step_ratio": round(m["s_per_step"] / median["ce"]["s_per_step"], 3),
                  **ratio_columns("step_ratio", round_ratios([r["s_per_step"] for r in runs[arm]],
                                                             [r["s_per_step"] for r in runs["ce"]])),
                  "s_per_step_range": [round(min(r["s_per_step"] for r in runs[arm]), 3),
                                       round(max(r["s_per_step"] for r in runs[arm]), 3)]}
            for arm, m in median.items()}


def teacher_rounding(model, rounded, tokenizer, examples: list[dict]) -> dict:
    """What the bfloat16 teacher changes in the targets: KL(float32 teacher || bfloat16 teacher) at the answer
    tokens (nats, mean) and how often their top-1 token agrees."""
    from trimllm.distill import kd_sum
    from trimllm.sft import SFTCollator, pad_id

    kl, agree, count = 0.0, 0, 0
    collate = SFTCollator(pad_id(tokenizer))
    for start in range(0, len(examples), 8):
        batch = collate(examples[start:start + 8])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            exact, bf16 = model(**inputs).logits[:, :-1].float(), rounded(**inputs).logits[:, :-1].float()
        mask = batch["labels"][:, 1:] != -100
        total, n = kd_sum(bf16, exact, mask)
        kl, count = kl + float(total), count + int(n)
        agree += int(((exact.argmax(-1) == bf16.argmax(-1)) & mask).sum())
    return {"kl_nats": round(kl / count, 5), "top1_agreement": round(agree / count, 4), "answer_tokens": count}


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
        "process's resident peak during the stage (on CPU it includes what the allocator kept from earlier arms)."
        + (" s / step: median (min–max) of the rounds; vs CE: the ratio within each round, median (min–max). "
           + timing_line(f["distillation_noise"]) if "distillation_noise" in f else ""),
        *([] if "bf16_teacher" not in s else [
            "", f"The bf16 teacher's targets: KL(float32 teacher || bfloat16 teacher) = {s['bf16_teacher']['kl_nats']} "
            f"nats per answer token, top-1 token the same at {s['bf16_teacher']['top1_agreement']:.1%} of "
            f"{s['bf16_teacher']['answer_tokens']} answer tokens (first 32 examples)."]),
        "",
        "| arm | s / step | vs CE | teacher forward s / step | peak memory MB |",
        "|---|---|---|---|---|",
    ]
    for arm, e in f["distillation"].items():
        lines.append(f"| {arm} | {with_range(e, 's_per_step', 3)} | {with_range(e, 'step_ratio', 3, 'x')} | {e['teacher_s_per_step']} | "
                     f"{e['peak_memory_mb']:,.0f} |")
    worst = max(e["step_ratio"] for arm, e in f["distillation"].items() if arm != "ce")
    best_arm, best = min(((arm, e["step_ratio"]) for arm, e in f["distillation"].items() if arm != "ce"),
                         key=lambda x: x[1])
    d, ce = f["distillation"], f["distillation"]["ce"]["s_per_step"]
    answer = d["kd answer"]
    why = ("" if worst <= 1.4 else
           f" Why: the teacher has the full depth, {s['removed'] + s['student_blocks']} blocks against the student's "
           f"{s['student_blocks']}, so its forward alone (no backward) costs {answer['teacher_s_per_step'] / ce:.2f} of "
           f"a CE step of the pruned student (teacher column / CE s / step), and the rest of distillation (the KL at "
           f"the answer tokens) adds {(answer['s_per_step'] - ce - answer['teacher_s_per_step']) / ce:+.2f}: the ratio "
           "is about 1 + the teacher's share, so 1.4x needs a teacher forward of at most 0.4 CE steps. Only the LM "
           "head's answer window runs in either model for `tokens: answer` (the collator's `logits_to_keep`); "
           "`tokens: all` runs both LM heads on every position and the student's backward through them. "
           "`distill.teacher_dtype: bfloat16` (the teacher's forward on the CPU's bfloat16 units; the student and the "
           "KL stay float32)" + (f" made the teacher's forward {1 - d['kd answer, bf16 teacher']['teacher_s_per_step'] / answer['teacher_s_per_step']:.0%} "
                                 f"cheaper here, not the {answer['teacher_s_per_step'] / ce / 0.4:.1f}x that would need"
                                 if "kd answer, bf16 teacher" in d else " was not measured in this run") + ".")
    return "\n".join([*lines, "", f"Target: a distillation step <= 1.4x a CE step: {'met' if worst <= 1.4 else 'NOT met'} "
                       f"for every arm (worst: {worst}x); best: {best_arm} at {best}x "
                       f"({'met' if best <= 1.4 else 'not met'}).{why}"])


if __name__ == "__main__":
    main()
