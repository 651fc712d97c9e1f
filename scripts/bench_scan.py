"""Naive vs fast exact calibration scan (TrimLLM's task_accuracy scorer) on the packaged SmolLM2-135M.

    python scripts/bench_scan.py                  # defaults below; about 30 minutes on a 2-core CPU
    python scripts/bench_scan.py --n-calib 8 --steps 4 --device cuda

Measures, on one calibration set drawn from the SciQ train side:
- naive: every candidate bypassed in turn, each (question, choice) through the whole model (lm-eval style);
- fast: choices packed per question, only the blocks from the candidate on re-run, LM head at answer tokens;
  for all 30 blocks and for all 60 attention / MLP halves;
- proxy: --proxy ranks the candidates (task_accuracy: the exact fast scan on --proxy-fraction of the questions;
  or a one-pass scorer such as block_influence) and only the --proxy-k lowest are scanned exactly, over --steps
  consecutive drop steps (each step drops the fast full scan's choice), counting how often the proxy picks the same.

Saves benchmarks/scan.json and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import copy
import json
import time

from _common import (
    ROOT,
    TimingNoise,
    command_line,
    environment,
    environment_line,
    parser,
    publish,
    timing_line,
    write_section,
)

from trimllm.modeling import load_model
from trimllm.scoring import CalibrationSet, run_scorer
from trimllm.scoring.candidates import remove_candidate
from trimllm.timing import ratio_columns, round_ratios, spread, with_range


def scan(model, tokenizer, calibration, granularity: str, **options):
    start = time.perf_counter()
    result = run_scorer("task_accuracy", model, tokenizer, calibration, granularity=granularity, **options)
    return result, time.perf_counter() - start


def naive_vs_fast(model, tokenizer, calibration, granularity: str, repeats: int, common: dict, rounds: dict) -> dict:
    """The fast and the naive exact scan of every candidate, ``repeats`` pairs back to back (the speedup per pair,
    with its range); each scan's rate per round goes into ``rounds`` for the noise check."""
    fast_s, naive_s = [], []
    for _ in range(repeats):
        fast, seconds = scan(model, tokenizer, calibration, granularity, fast=True, **common)
        fast_s.append(seconds)
        naive, seconds = scan(model, tokenizer, calibration, granularity, fast=False, **common)
        naive_s.append(seconds)
        print(granularity, {"fast_s": round(fast_s[-1], 2), "naive_s": round(naive_s[-1], 2)}, flush=True)
    rounds.update({f"{granularity} fast scans/s": [1 / x for x in fast_s],
                   f"{granularity} naive scans/s": [1 / x for x in naive_s]})
    entry = {
        "candidates": len(fast.scores), **_seconds("naive_s", naive_s), **_seconds("fast_s", fast_s),
        **ratio_columns("speedup", round_ratios(naive_s, fast_s)),
        "same_choice": fast.least_important() == naive.least_important(),
        "choice": fast.least_important(), "max_abs_score_diff": max(abs(fast.scores[c] - naive.scores[c])
                                                                    for c in fast.scores),
    }
    print(granularity, entry, flush=True)
    return entry


def main() -> None:
    options = parser(__doc__, "scan.json", "Calibration scan")
    options.add_argument("--data", default="sciq")
    options.add_argument("--n-calib", type=int, default=16)
    options.add_argument("--max-length", type=int, default=256)
    options.add_argument("--batch-size", type=int, default=16)
    options.add_argument("--proxy", default="task_accuracy", help="proxy scorer (task_accuracy = exact scan on a subset)")
    options.add_argument("--proxy-fraction", type=float, default=0.25, help="share of the questions the task_accuracy proxy scans")
    options.add_argument("--proxy-k", type=int, default=8)
    options.add_argument("--steps", type=int, default=10)
    options.add_argument("--repeats", type=int, default=2, help="fast / naive pairs per granularity (median, range)")
    args = options.parse_args()
    if args.render_only:
        write_section(ROOT / "BENCHMARKS.md", args.section, markdown(json.loads(args.out.read_text())))
        return

    model, tokenizer = load_model(args.model, device=args.device)
    calibration = CalibrationSet.from_dataset(args.data, args.n_calib)
    common = {"batch_size": args.batch_size, "max_length": args.max_length}
    noise, rounds = TimingNoise().start(), {}
    figures: dict = {"granularities": {g: naive_vs_fast(model, tokenizer, calibration, g, args.repeats, common, rounds)
                                       for g in ("block", "sublayer")}}
    block = figures["granularities"]["block"]

    # Proxy pre-selection over consecutive drop steps (whole blocks).
    work = copy.deepcopy(model)
    steps, proxy_seconds, full_seconds = [], [], []
    for step in range(args.steps):
        full, full_s = scan(work, tokenizer, calibration, "block", fast=True, **common)
        proxy, proxy_s = scan(work, tokenizer, calibration, "block", fast=True, proxy=args.proxy,
                              proxy_k=args.proxy_k, proxy_fraction=args.proxy_fraction, **common)
        steps.append({"step": step, "full_choice": full.least_important(), "proxy_choice": proxy.least_important(),
                      "fast_s": round(full_s, 2), "proxy_s": round(proxy_s, 2)})
        print(steps[-1], flush=True)
        full_seconds.append(full_s)
        proxy_seconds.append(proxy_s)
        remove_candidate(work, full.least_important())
    same = sum(s["full_choice"] == s["proxy_choice"] for s in steps)
    naive_low, naive_high = block["naive_s_range"]
    figures.update(
        noise=noise.verdict(rounds),
        # the naive scan's rounds against the proxy's step 0 (one run): the range the naive rounds give
        proxy_speedup_range=[round(naive_low / proxy_seconds[0], 2), round(naive_high / proxy_seconds[0], 2)],
        naive_s=block["naive_s"], fast_s=block["fast_s"], speedup=block["speedup"], same_choice=block["same_choice"],
        proxy_s=round(proxy_seconds[0], 2), proxy_speedup=round(block["naive_s"] / proxy_seconds[0], 2),
        proxy_same_choice_fraction=round(same / len(steps), 3), proxy_steps=steps,
        setup={
            "model": args.model, "data": args.data, "n_calib": args.n_calib, "max_length": args.max_length,
            "batch_size": args.batch_size, "proxy": args.proxy, "proxy_k": args.proxy_k,
            "proxy_fraction": args.proxy_fraction, "repeats": args.repeats,
            **environment(model),
            "command": command_line("bench_scan.py", args),
        },
    )
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures))


def markdown(f: dict) -> str:
    s = f["setup"]
    lines = [
        f"Command: `{s['command']}` ({environment_line(s)}). Figures in `benchmarks/scan.json`.",
        "",
        f"TrimLLM `task_accuracy` scan of {s['model']} on {s['n_calib']} {s['data']} train-side questions "
        f"(contexts cut to {s['max_length']} tokens), "
        + (f"median (min–max) of {s['repeats']} fast / naive pairs, the speedup per pair. {timing_line(f['noise'])}"
           if "noise" in f else "one run:"),
        "",
        "| candidates | naive s | fast s | speedup | same choice | max abs score diff |",
        "|---|---|---|---|---|---|",
    ]
    for g in f["granularities"].values():
        lines.append(f"| {g['candidates']} | {with_range(g, 'naive_s', 2)} | {with_range(g, 'fast_s', 2)} | "
                     f"{with_range(g, 'speedup', 2, 'x')} | {g['same_choice']} "
                     f"({g['choice']}) | {g['max_abs_score_diff']:.1e} |")
    lines += [
        "",
        f"Proxy pre-selection ({_proxy_name(s)}, then the exact scan of the {s['proxy_k']} it ranks lowest"
        f"{' on the remaining questions, their first counts reused' if s['proxy'] == 'task_accuracy' else ''}): "
        f"{f['proxy_s']} s at step 0, "
        f"**{f['proxy_speedup']}x** faster than the naive scan"
        + (" ({}–{} against the naive rounds)".format(*f["proxy_speedup_range"]) if "proxy_speedup_range" in f else "")
        + "; same choice as the full exact scan on "
        f"**{f['proxy_same_choice_fraction']:.0%}** of {len(f['proxy_steps'])} consecutive drop steps.",
        "",
        "Targets: fast >= 3x naive with the identical choice; proxy >= 10x with the same choice on >= 9 of 10 steps.",
        "",
        f"- fast exact scan: {'met' if _fast_ok(f) else 'NOT met'}",
        f"- proxy pre-selection: {'met' if _proxy_ok(f) else 'NOT met'}"
        f" (speed {'>=' if f['proxy_speedup'] >= 10 else '<'} 10x, agreement "
        f"{'>=' if f['proxy_same_choice_fraction'] >= 0.9 else '<'} 9/10 at proxy_k = {s['proxy_k']})",
    ]
    if s["proxy"] == "block_influence":
        lines.append("  (block_influence ranks some of the exact scan's choices as important: a small k misses them, "
                     "a large k costs the speed)")
    lines += ["", *f["notes"]] if f.get("notes") else []  # what was measured about a target not met (by hand)
    return "\n".join(lines)


def _seconds(name: str, values: list[float]) -> dict:
    s = spread(values)
    return {name: round(s["median"], 2), f"{name}_range": [round(s["min"], 2), round(s["max"], 2)]}


def _proxy_name(s: dict) -> str:
    if s["proxy"] == "task_accuracy":
        return f"task_accuracy on {s.get('proxy_fraction', 0.25):.0%} of the questions"
    return s["proxy"]


def _fast_ok(f: dict) -> bool:
    return all(g["speedup"] >= 3 and g["same_choice"] for g in f["granularities"].values())


def _proxy_ok(f: dict) -> bool:
    return f["proxy_speedup"] >= 10 and f["proxy_same_choice_fraction"] >= 0.9


if __name__ == "__main__":
    main()
