"""Training throughput: LoRA fine-tuning steps/s and tokens/s of SmolLM2-135M as blocks are removed, and the time
per sample with Progressive Layer Dropping on vs off.

    python scripts/bench_train.py                 # defaults below; about 15 minutes on a 2-core CPU
    python scripts/bench_train.py --device cuda --batch-size 32

Every configuration trains with trimllm's own stage trainer (trimllm.train.train_stage: peft LoRA on all linear
layers, answer-only loss, a fresh AdamW) on the same SciQ train-side examples in the same order; a callback times
each optimizer step after --warmup steps (mean step time = time per sample x batch). Depths remove blocks in block_influence order. PLD runs alternate with
the PLD-off runs (--repeats pairs with different seeds, so different gate draws; median of each); with --pld-gamma large, theta(t) equals theta_bar from the
first step, so the figure is PLD's steady state (with the paper's gamma = 0.001 a run's early steps keep more).

Saves benchmarks/train.json (top-level pld_time_per_sample_ratio) and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from trimllm.bench import command_line, environment, environment_line, publish
from trimllm.config import Recipe
from trimllm.data import train_side_splits
from trimllm.modeling import load_model
from trimllm.pld import keep_probability
from trimllm.prompts import mc_item
from trimllm.scoring import CalibrationSet, run_scorer
from trimllm.surgery import drop_blocks
from trimllm.train import sft_examples, train_stage

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (data loading, forward, backward, optimizer)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def seconds_per_step(model, tokenizer, examples, recipe: Recipe, warmup: int) -> float:
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as work:
        train_stage(copy.deepcopy(model), tokenizer, examples, recipe, Path(work) / "stage", 0,
                    Path(work) / "metrics.jsonl", extra_callbacks=[timer])
    return statistics.mean(timer.seconds[warmup:])  # the mean: time per sample over the run, random skips included


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="sciq")
    parser.add_argument("--n-train", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--removed", default="0,4,8,12,15", help="blocks removed, one configuration each")
    parser.add_argument("--repeats", type=int, default=3, help="PLD on/off pairs")
    parser.add_argument("--theta-bar", type=float, default=0.5)
    parser.add_argument("--pld-gamma", type=float, default=10.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "train.json")
    parser.add_argument("--section", default="Training throughput and Progressive Layer Dropping")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, device=args.device)
    splits = train_side_splits(args.data, 16, 16, 0, args.n_train)
    examples = sft_examples(tokenizer, [mc_item(args.data, r) for r in splits["train"]], args.max_length)
    tokens_per_sample = statistics.mean(len(e["input_ids"]) for e in examples)
    calibration = CalibrationSet(args.data, [mc_item(args.data, r) for r in splits["calibration"]], 0)
    order = [c for c, _ in run_scorer("block_influence", model, tokenizer, calibration, granularity="block",
                                      max_length=args.max_length).ranked()]

    def recipe(pld: bool, seed: int = 0) -> Recipe:
        r = Recipe()
        r.train.seed = seed  # each on/off pair draws other PLD gates (and the same data order within the pair)
        r.train.steps_per_stage = args.warmup + args.steps
        r.train.batch_size, r.train.save_steps, r.train.logging_steps = args.batch_size, 0, 10_000
        r.pld.enabled, r.pld.theta_bar, r.pld.gamma = pld, args.theta_bar, args.pld_gamma
        return r

    depths = []
    base_seconds = None
    for removed in (int(x) for x in args.removed.split(",")):
        trimmed = copy.deepcopy(model)
        if removed:
            drop_blocks(trimmed, [int(c.split(".")[1]) for c in order[:removed]])
        seconds = seconds_per_step(trimmed, tokenizer, examples, recipe(False), args.warmup)
        base_seconds = base_seconds or seconds
        depths.append({"removed": removed, "blocks": trimmed.config.num_hidden_layers,
                       "s_per_step": round(seconds, 3),
                       "tokens_per_s": round(args.batch_size * tokens_per_sample / seconds, 1),
                       "time_ratio": round(seconds / base_seconds, 3)})
        print(depths[-1], flush=True)
        del trimmed

    off, on = [], []
    for repeat in range(args.repeats):  # alternate, so drifts of the machine hit both alike
        off.append(seconds_per_step(model, tokenizer, examples, recipe(False, repeat), args.warmup))
        on.append(seconds_per_step(model, tokenizer, examples, recipe(True, repeat), args.warmup))
        print({"pld_off_s": off[-1], "pld_on_s": on[-1]}, flush=True)
    layers = model.config.num_hidden_layers
    expected_keep = statistics.mean(keep_probability(depth, layers, args.theta_bar) for depth in range(1, layers + 1))
    off_s, on_s = statistics.median(off), statistics.median(on)
    figures = {
        "pld_time_per_sample_ratio": round(on_s / off_s, 3),
        "pld_off_s_per_sample": round(off_s / args.batch_size, 4),
        "pld_on_s_per_sample": round(on_s / args.batch_size, 4),
        "pld_expected_keep_fraction": round(expected_keep, 3),
        "pld_runs": {"off": [round(x, 3) for x in off], "on": [round(x, 3) for x in on]},
        "depths": depths,
        "setup": {
            "model": args.model, "data": args.data, "examples": len(examples),
            "tokens_per_sample": round(tokens_per_sample, 1), "batch_size": args.batch_size, "steps": args.steps,
            "warmup": args.warmup, "theta_bar": args.theta_bar, "pld_gamma": args.pld_gamma, "lora": "r=8, all-linear",
            **environment(model),
            "command": command_line("bench_train.py", args),
        },
    }
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section,
            markdown(figures))


def markdown(f: dict) -> str:
    s = f["setup"]
    lines = [
        f"Command: `{s['command']}` ({environment_line(s)}). Figures in `benchmarks/train.json`.",
        "",
        f"LoRA ({s['lora']}) fine-tuning of {s['model']} on {s['examples']} {s['data']} train-side examples "
        f"(mean {s['tokens_per_sample']} tokens), batch {s['batch_size']}, mean of {s['steps']} steps after "
        f"{s['warmup']} warm-up steps; blocks removed in block_influence order:",
        "",
        "| blocks removed | blocks | s / step | tokens / s | time vs full depth |",
        "|---|---|---|---|---|",
    ]
    for d in f["depths"]:
        lines.append(f"| {d['removed']} | {d['blocks']} | {d['s_per_step']} | {d['tokens_per_s']} | {d['time_ratio']}x |")
    ok = f["pld_time_per_sample_ratio"] <= 0.8
    lines += [
        "",
        f"Progressive Layer Dropping (theta_bar = {s['theta_bar']}, gamma = {s['pld_gamma']}: the steady state), "
        f"full depth, {len(f['pld_runs']['on'])} alternating on/off pairs: "
        f"{f['pld_on_s_per_sample']} s vs {f['pld_off_s_per_sample']} s per sample, "
        f"**{f['pld_time_per_sample_ratio']}x** the time per sample (expected fraction of blocks run: "
        f"{f['pld_expected_keep_fraction']}). Target <= 0.8x: {'met' if ok else 'NOT met'}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
