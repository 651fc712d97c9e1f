"""Training throughput: LoRA fine-tuning steps/s and tokens/s of SmolLM2-135M as blocks are removed, the time
per sample with Progressive Layer Dropping on vs off, and random vs length-grouped batches.

    python scripts/bench_train.py                 # depths and PLD; about 15 minutes on a 2-core CPU
    python scripts/bench_train.py --part length_grouping   # random vs length-grouped batches, SciQ and FPB
    python scripts/bench_distill.py                          # distillation vs CE steps (its own script)
    python scripts/bench_train.py --device cuda --batch-size 32

Every configuration trains with trimllm's own stage trainer (trimllm.training.train_stage: peft LoRA on all linear
layers, answer-only loss, a fresh AdamW) on the same SciQ train-side examples in the same order; a callback times
each optimizer step after --warmup steps (mean step time = time per sample x batch). Depths remove blocks in block_influence order. PLD runs alternate with
the PLD-off runs (--repeats pairs with different seeds, so different gate draws; median of each); with --pld-gamma large, theta(t) equals theta_bar from the
first step, so the figure is PLD's steady state (with the paper's gamma = 0.001 a run's early steps keep more).

Length grouping (``--part length_grouping``): for each ``--grouping-tasks`` entry (data set : train-side examples :
batch), the same examples and the same number of optimizer steps (``--grouping-steps``) with the Trainer's random
batches and with trimllm's length-grouped batches (the only difference: ``train.group_by_length``), in
``--grouping-pairs`` alternating pairs (speed from all, with its spread); then the first pair's validation accuracy on the same train-side items, with a paired exact McNemar test. The padded
share is that of the batches the run computed (the Trainer's own counts).

Saves benchmarks/train.json (top-level pld_time_per_sample_ratio; "length_grouping") and sections of BENCHMARKS.md.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import (
    ROOT,
    TimingNoise,
    command_line,
    environment,
    environment_line,
    parser,
    publish,
    timing_line,
    write_json,
    write_section,
)
from _grouping import grouping_entry, grouping_markdown, seconds_columns
from transformers import TrainerCallback

from trimllm.config import PLDConfig, Recipe
from trimllm.data import train_side_splits
from trimllm.modeling import load_model
from trimllm.multiple_choice import mc_correct
from trimllm.pld import keep_probability
from trimllm.prompts import mc_item
from trimllm.scoring import CalibrationSet, run_scorer
from trimllm.sft import sft_examples
from trimllm.stages import StageFiles, stage_spec
from trimllm.surgery import drop_blocks, get_plan
from trimllm.timing import ratio_columns, round_ratios, with_range
from trimllm.training import train_stage

SECTIONS = {"throughput": "Training throughput and Progressive Layer Dropping",
            "length_grouping": "Training throughput: length-grouped batches"}


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (data loading, forward, backward, optimizer)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def timed_stage(model, tokenizer, examples, recipe: Recipe, teacher=None):
    """Train a copy of ``model`` for one stage (stage 0's training, the adapter of a pruned model where it is one);
    (trained model, seconds of each optimizer step, stage stats)."""
    timer = StepTimer()
    spec = stage_spec(recipe, 0, get_plan(model).pruned)
    with tempfile.TemporaryDirectory() as work:
        trained, stats = train_stage(copy.deepcopy(model), tokenizer, examples, recipe, spec,
                                     StageFiles(Path(work) / "stage", Path(work) / "metrics.jsonl"),
                                     extra_callbacks=[timer], teacher=teacher)
    return trained, timer.seconds, stats


def removal_order(model, tokenizer, task: str, calibration_records: list, max_length: int) -> list[int]:
    """Blocks in block_influence order (least important first), on train-side calibration questions."""
    calibration = CalibrationSet(task, [mc_item(task, r) for r in calibration_records], 0)
    ranked = run_scorer("block_influence", model, tokenizer, calibration, granularity="block", max_length=max_length)
    return [int(c.split(".")[1]) for c, _ in ranked.ranked()]


def seconds_per_step(model, tokenizer, examples, recipe: Recipe, warmup: int) -> float:
    # the mean: time per sample over the run, random skips included
    return statistics.mean(timed_stage(model, tokenizer, examples, recipe)[1][warmup:])


def training_parser(doc: str, section: str | None, steps: int):
    """The common options plus those of a timed training run (shared with bench_distill.py)."""
    options = parser(doc, "train.json", section)
    options.add_argument("--data", default="sciq")
    options.add_argument("--n-train", type=int, default=128)
    options.add_argument("--max-length", type=int, default=256)
    options.add_argument("--batch-size", type=int, default=8)
    options.add_argument("--steps", type=int, default=steps, help="timed steps per configuration")
    options.add_argument("--warmup", type=int, default=2)
    return options


def main() -> None:
    options = training_parser(__doc__, None, steps=12)
    options.add_argument("--removed", default="0,4,8,12,15", help="blocks removed, one configuration each")
    options.add_argument("--repeats", type=int, default=3,
                         help="rounds over the depths (each depth once per round) and PLD on/off pairs")
    options.add_argument("--theta-bar", type=float, default=0.5)
    options.add_argument("--pld-gamma", type=float, default=10.0)
    options.add_argument("--part", choices=sorted(SECTIONS), default="throughput",
                        help="throughput: depths and PLD; length_grouping: random vs length-grouped batches")
    options.add_argument("--grouping-tasks", default="sciq:1000:8,financial_phrasebank:1500:16",
                        help="data set:train-side examples:batch, one side-by-side comparison each")
    options.add_argument("--grouping-steps", type=int, default=24, help="optimizer steps of each run")
    options.add_argument("--grouping-pairs", type=int, default=3,
                         help="length grouping: alternating random / grouped pairs (speed from all, accuracy from the first)")
    options.add_argument("--n-validation", type=int, default=200, help="train-side validation items (grouping)")
    args = options.parse_args()
    args.section = args.section or SECTIONS[args.part]
    if args.render_only:
        render = grouping_markdown if args.part == "length_grouping" else markdown
        write_section(ROOT / "BENCHMARKS.md", args.section, render(json.loads(args.out.read_text())))
        return
    {"throughput": throughput, "length_grouping": length_grouping}[args.part](args)


def depth_rounds(model, tokenizer, examples, order: list[int], recipe: Recipe, args) -> tuple[list[dict], dict]:
    """Seconds per step with each ``--removed`` count of blocks removed (in ``order``), ``--repeats`` rounds over
    all depths in turn, so drifts of the machine hit all alike: (a row per depth, each depth's seconds per round)."""
    tokens_per_sample = statistics.mean(len(e["input_ids"]) for e in examples)
    trimmed = {}
    for removed in (int(x) for x in args.removed.split(",")):
        trimmed[removed] = copy.deepcopy(model)
        if removed:
            drop_blocks(trimmed[removed], order[:removed])
    seconds = {removed: [] for removed in trimmed}
    for repeat in range(args.repeats):
        for removed, m in trimmed.items():
            seconds[removed].append(seconds_per_step(m, tokenizer, examples, recipe, args.warmup))
            print({"round": repeat + 1, "removed": removed, "s_per_step": round(seconds[removed][-1], 3)}, flush=True)
    base = seconds[min(trimmed)]
    depths = [{"removed": removed, "blocks": m.config.num_hidden_layers,
               **seconds_columns("s_per_step", seconds[removed], 3),
               **seconds_columns("tokens_per_s", [args.batch_size * tokens_per_sample / x for x in seconds[removed]], 1),
               **ratio_columns("time_ratio", round_ratios(seconds[removed], base))}
              for removed, m in trimmed.items()]
    return depths, seconds


def throughput(args) -> None:
    """Seconds per step as blocks are removed, and PLD on vs off, alternating."""
    model, tokenizer = load_model(args.model, device=args.device)
    splits = train_side_splits(args.data, 16, 16, 0, args.n_train)
    examples = sft_examples(tokenizer, [mc_item(args.data, r) for r in splits["train"]], args.max_length)
    tokens_per_sample = statistics.mean(len(e["input_ids"]) for e in examples)
    order = removal_order(model, tokenizer, args.data, splits["calibration"], args.max_length)

    def recipe(pld: bool, seed: int = 0) -> Recipe:
        r = Recipe()
        r.train.seed = seed  # each on/off pair draws other PLD gates (and the same data order within the pair)
        r.train.steps_per_stage = args.warmup + args.steps
        r.train.batch_size, r.train.save_steps, r.train.logging_steps = args.batch_size, 0, 10_000
        r.pld = PLDConfig(theta_bar=args.theta_bar, gamma=args.pld_gamma) if pld else None
        return r

    noise = TimingNoise().start()
    depths, seconds = depth_rounds(model, tokenizer, examples, order, recipe(False), args)
    off, on = [], []
    for repeat in range(args.repeats):  # alternate, so drifts of the machine hit both alike
        off.append(seconds_per_step(model, tokenizer, examples, recipe(False, repeat), args.warmup))
        on.append(seconds_per_step(model, tokenizer, examples, recipe(True, repeat), args.warmup))
        print({"pld_off_s": off[-1], "pld_on_s": on[-1]}, flush=True)
    rounds = {f"{removed} removed steps/s": [1 / x for x in values] for removed, values in seconds.items()}
    noise = noise.verdict({**rounds, "PLD off steps/s": [1 / x for x in off], "PLD on steps/s": [1 / x for x in on]})
    layers = model.config.num_hidden_layers
    expected_keep = statistics.mean(keep_probability(depth, layers, args.theta_bar) for depth in range(1, layers + 1))
    off_s, on_s = statistics.median(off), statistics.median(on)
    figures = {
        "pld_time_per_sample_ratio": round(on_s / off_s, 3),
        # each on/off pair ran back to back: the ratio per pair, with its range
        "pld_pair_ratio_range": ratio_columns("r", round_ratios(on, off))["r_range"],
        "pld_off_s_per_sample": round(off_s / args.batch_size, 4),
        "pld_on_s_per_sample": round(on_s / args.batch_size, 4),
        "pld_expected_keep_fraction": round(expected_keep, 3),
        "pld_runs": {"off": [round(x, 3) for x in off], "on": [round(x, 3) for x in on]},
        "depths": depths,
        "noise": noise,
        "setup": {
            "model": args.model, "data": args.data, "examples": len(examples),
            "tokens_per_sample": round(tokens_per_sample, 1), "batch_size": args.batch_size, "steps": args.steps,
            "warmup": args.warmup, "repeats": args.repeats, "theta_bar": args.theta_bar, "pld_gamma": args.pld_gamma, "lora": "r=8, all-linear",
            **environment(model),
            "command": command_line("bench_train.py", args),
        },
    }
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    # the other parts' figures (length_grouping, bench_distill.py's distillation) stay as they were
    figures.update({k: v for k, v in previous.items() if k not in figures})
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section,
            markdown(figures))


def length_grouping(args) -> None:
    """Random vs length-grouped batches side by side: same model, examples and steps; ``--grouping-pairs``
    alternating pairs (each pair's seed its own), speed from every pair, accuracy from the first."""
    model, tokenizer = load_model(args.model, device=args.device)
    entries, noise = {}, TimingNoise().start()
    for spec in args.grouping_tasks.split(","):
        task, n_train, batch = spec.split(":")
        splits = train_side_splits(task, args.n_validation, 0, 0, int(n_train))
        examples = sft_examples(tokenizer, [mc_item(task, r) for r in splits["train"]], 512)
        validation = [mc_item(task, r) for r in splits["validation"]]
        pairs = [grouping_pair(model, tokenizer, examples, validation if pair == 0 else None, int(batch), pair, args)
                 for pair in range(args.grouping_pairs)]
        entries[task] = grouping_entry(pairs, len(examples), int(batch), args.grouping_steps)
        print(task, entries[task], flush=True)
    figures = json.loads(args.out.read_text()) if args.out.is_file() else {}
    figures["length_grouping"] = entries
    figures["length_grouping_noise"] = noise.verdict(
        {f"{task} {arm} tokens/s": e[f"real_tokens_per_s_{arm}_rounds"] for task, e in entries.items()
         for arm in ("random", "grouped")})
    figures["length_grouping_setup"] = {
        "model": args.model, "steps": args.grouping_steps, "warmup": args.warmup, "n_validation": args.n_validation,
        "pairs": args.grouping_pairs, "lora": "r=8, all-linear", "max_length": 512, **environment(model),
        "command": command_line("bench_train.py", args, skip=("out", "section", "removed", "repeats", "theta_bar",
                                                                 "pld_gamma", "n_train", "data", "batch_size", "steps",
                                                                 "max_length")),
    }
    write_json(args.out, figures)
    body = grouping_markdown(figures)
    print(body)
    write_section(ROOT / "BENCHMARKS.md", args.section, body)


def grouping_pair(model, tokenizer, examples, validation, batch: int, seed: int, args) -> dict:
    """One random and one grouped run (seed ``seed``, same steps); validation outcomes when ``validation`` is given."""
    runs = {}
    for grouped in (False, True):
        recipe = Recipe()
        recipe.train.batch_size, recipe.train.steps_per_stage, recipe.train.seed = batch, args.grouping_steps, seed
        recipe.train.save_steps, recipe.train.logging_steps = 0, 10_000
        recipe.train.group_by_length = grouped
        trained, step_seconds, stats = timed_stage(model, tokenizer, examples, recipe)
        runs[grouped] = {"stats": stats, "s_per_step": statistics.mean(step_seconds[args.warmup:]),
                         "tokens_per_s": stats.tokens_real / sum(step_seconds),
                         "correct": mc_correct(trained, tokenizer, validation, 8, 512) if validation else None}
        print("grouped" if grouped else "random", seed, stats, flush=True)
        del trained
    return {"random": runs[False], "grouped": runs[True]}


def markdown(f: dict) -> str:
    s = f["setup"]
    lines = [
        f"Command: `{s['command']}` ({environment_line(s)}). Figures in `benchmarks/train.json`.",
        "",
        f"LoRA ({s['lora']}) fine-tuning of {s['model']} on {s['examples']} {s['data']} train-side examples "
        f"(mean {s['tokens_per_sample']} tokens), batch {s['batch_size']}, mean of {s['steps']} steps after "
        f"{s['warmup']} warm-up steps; blocks removed in block_influence order"
        + (f"; median (min–max) of {s['repeats']} rounds, each running every depth in turn, the time ratio per round. "
           f"{timing_line(f['noise']).rstrip('.')}" if "noise" in f else "") + ":",
        "",
        "| blocks removed | blocks | s / step | tokens / s | time vs full depth |",
        "|---|---|---|---|---|",
    ]
    for d in f["depths"]:
        lines.append(f"| {d['removed']} | {d['blocks']} | {with_range(d, 's_per_step', 3)} | "
                     f"{with_range(d, 'tokens_per_s')} | {with_range(d, 'time_ratio', 3, 'x')} |")
    ok = f["pld_time_per_sample_ratio"] <= 0.8
    lines += [
        "",
        f"Progressive Layer Dropping (theta_bar = {s['theta_bar']}, gamma = {s['pld_gamma']}: the steady state), "
        f"full depth, {len(f['pld_runs']['on'])} alternating on/off pairs: "
        f"{f['pld_on_s_per_sample']} s vs {f['pld_off_s_per_sample']} s per sample, "
        f"**{f['pld_time_per_sample_ratio']}x** the time per sample"
        + (" (per pair {:.3f}–{:.3f})".format(*f["pld_pair_ratio_range"]) if "pld_pair_ratio_range" in f else "")
        + " (expected fraction of blocks run: "
        f"{f['pld_expected_keep_fraction']}). Target <= 0.8x: {'met' if ok else 'NOT met'}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
