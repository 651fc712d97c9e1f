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
import tempfile
from pathlib import Path

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

from trimllm.config import DistillConfig, Recipe
from trimllm.data import train_side_splits
from trimllm.logit_cache import build as build_cache
from trimllm.modeling import load_model
from trimllm.prompts import mc_item
from trimllm.sft import pad_id, sft_examples
from trimllm.surgery import drop_blocks
from trimllm.timing import ratio_columns, round_ratios, with_range

# The arms: the recipe's distill settings (None = cross-entropy only, the baseline). "cached" arms read the
# teacher's top-64 from a cache built once before the rounds (trimllm.logit_cache) instead of running it.
ARMS = {"ce": None, "kd answer": {"tokens": "answer"},
        "kd answer, bf16 teacher": {"tokens": "answer", "teacher_dtype": "bfloat16"},
        "kd all": {"tokens": "all"},
        "kd answer, cached": {"tokens": "answer", "cache_k": 64},
        "kd all, cached": {"tokens": "all", "cache_k": 64},
        "kd answer + 16 positions, cached": {"tokens": 16, "cache_k": 64}}
CACHE_TARGET = 1.15  # issue 31: a distillation step with the cache at most this many CE steps


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
    with tempfile.TemporaryDirectory() as folder:
        cache = build_cache(model, tokenizer, examples, Path(folder), k=64, batch_size=args.batch_size,
                            pad_id=pad_id(tokenizer))
        runs, noise = alternate_arms(args, student, tokenizer, examples, teachers, cache)
        cache_figures = {key: cache.meta[key] for key in ("k", "examples", "bytes", "build_seconds")}
        cache_figures["positions"] = sum(len(e["input_ids"]) - 1 for e in examples)
    fidelity = teacher_rounding(model, teachers["bfloat16"], tokenizer, examples[:32])
    figures = json.loads(args.out.read_text()) if args.out.is_file() else {}
    figures["distillation"] = summarize(runs)
    figures["distillation_noise"] = noise
    figures["distillation_cache"] = cache_figures
    figures["distillation_setup"] = {
        "model": args.model, "data": args.data, "examples": len(examples), "batch_size": args.batch_size,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "removed": args.distill_removed,
        "student_blocks": student.config.num_hidden_layers, "bf16_teacher": fidelity, **environment(model),
        "command": command_line("bench_distill.py", args),
    }
    write_json(args.out, figures)
    write_section(ROOT / "BENCHMARKS.md", args.section, distillation_markdown(figures))


def alternate_arms(args, student, tokenizer, examples, teachers: dict, cache):
    """Each arm's rounds and the noise verdict: the arms alternate, so drifts of the machine hit every arm alike."""
    runs = {arm: [] for arm in ARMS}
    noise = TimingNoise().start()
    for repeat in range(args.repeats):  # alternate, so drifts of the machine hit every arm alike
        for arm, settings in ARMS.items():
            recipe = Recipe()
            recipe.train.seed, recipe.train.steps_per_stage = repeat, args.warmup + args.steps
            recipe.train.batch_size, recipe.train.save_steps, recipe.train.logging_steps = args.batch_size, 0, 10_000
            recipe.distill = DistillConfig(**settings) if settings else None
            teacher = (cache if settings.get("cache_k") else teachers[recipe.distill.teacher_dtype]) if settings else None
            _, seconds, stats = timed_stage(student, tokenizer, examples, recipe, teacher)
            runs[arm].append({"s_per_step": statistics.mean(seconds[args.warmup:]), "peak_memory_mb": stats.peak_memory_mb,
                              "teacher_s_per_step": stats.teacher_seconds / len(seconds)})
            print(arm, runs[arm][-1], flush=True)
    return runs, noise.verdict({f"{arm} steps/s": [1 / r["s_per_step"] for r in rs] for arm, rs in runs.items()})


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
        *([] if "distillation_cache" not in f else ["", cache_line(f["distillation_cache"])]),
        "",
        "| arm | s / step | vs CE | teacher s / step (forward or cache read) | peak memory MB |",
        "|---|---|---|---|---|",
    ]
    for arm, e in f["distillation"].items():
        lines.append(f"| {arm} | {with_range(e, 's_per_step', 3)} | {with_range(e, 'step_ratio', 3, 'x')} | {e['teacher_s_per_step']} | "
                     f"{e['peak_memory_mb']:,.0f} |")
    return "\n".join([*lines, "", "\n\n".join(target_lines(f))])


def cache_line(c: dict) -> str:
    return (f"Teacher-logit cache (`distill.cache_k: {c['k']}`, trimllm.logit_cache): built once over the "
            f"{c['examples']} examples ({c['positions']:,} positions) in {c['build_seconds']:.1f} s, "
            f"{c['bytes'] / 2**20:.1f} MiB on disk ({c['bytes'] / c['positions']:.0f} bytes a position: top-{c['k']} "
            "ids as uint16 + float16 log-probabilities + the tail's float16 log-mass); the cached arms read it instead of "
            "running the teacher.")


def target_lines(f: dict) -> list[str]:
    """The cache target (issue 31) per cached arm, and why the live teacher costs what it costs."""
    s, d = f["distillation_setup"], f["distillation"]
    ce, answer = d["ce"]["s_per_step"], d["kd answer"]
    cached = {arm: e["step_ratio"] for arm, e in d.items() if "cached" in arm}
    lines = []
    if cached:
        verdicts = "; ".join(f"{arm}: {r}x ({'met' if r <= CACHE_TARGET else 'NOT met'})" for arm, r in cached.items())
        lines.append(f"Target (issue 31): a distillation step with the cache <= {CACHE_TARGET}x a CE step. {verdicts}.")
    lines.append(
        f"Why the live teacher costs more: it has the full depth, {s['removed'] + s['student_blocks']} blocks against the "
        f"student's {s['student_blocks']}, so its forward alone (no backward) costs {answer['teacher_s_per_step'] / ce:.2f} "
        "of a CE step of the pruned student (teacher column / CE s / step). Only the LM head's answer window runs in "
        "either model for `tokens: answer` (the collator's `logits_to_keep`); `tokens: all` runs the student's LM head "
        "on every position and its backward through it, which the cache does not remove; `tokens: N` keeps the LM head "
        "at the answer window and N random positions per row, an unbiased estimate of the every-position KL."
        + (f" `distill.teacher_dtype: bfloat16` made the teacher's forward "
           f"{1 - d['kd answer, bf16 teacher']['teacher_s_per_step'] / answer['teacher_s_per_step']:.0%} cheaper."
           if "kd answer, bf16 teacher" in d else ""))
    return lines


if __name__ == "__main__":
    main()
