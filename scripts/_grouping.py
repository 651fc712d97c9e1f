"""bench_train.py --part length_grouping's figures: a task's entry from its alternating random / grouped pairs, and
the table (kept beside bench_train.py so that each file stays small)."""

from __future__ import annotations

import math

from _common import environment_line, mcnemar_exact, timing_line

from trimllm.timing import ratio_columns, round_ratios, spread, with_range


def seconds_columns(name: str, values: list[float], digits: int) -> dict:
    """A figure's median over the rounds and its ``_range``."""
    s = spread(values)
    return {name: round(s["median"], digits), f"{name}_range": [round(s["min"], digits), round(s["max"], digits)]}


def grouping_entry(pairs: list[dict], examples: int, batch: int, steps: int) -> dict:
    """Speed: the median (and range) over the pairs, the ratio within each pair; padding and accuracy: the first pair."""
    first = pairs[0]

    def share(run):
        return 1 - run["stats"].tokens_real / run["stats"].tokens_padded

    def rounds(arm: str, key: str) -> list[float]:
        return [pair[arm][key] for pair in pairs]

    n = len(first["grouped"]["correct"])
    acc = {arm: sum(first[arm]["correct"]) / n for arm in ("random", "grouped")}
    entry = {"examples": examples, "batch_size": batch, "steps": steps, "pairs": len(pairs),
             "padded_share_random": round(share(first["random"]), 4),
             "padded_share_grouped": round(share(first["grouped"]), 4)}
    for arm in ("random", "grouped"):
        entry.update(seconds_columns(f"real_tokens_per_s_{arm}", rounds(arm, "tokens_per_s"), 1))
        entry.update(seconds_columns(f"s_per_step_{arm}", rounds(arm, "s_per_step"), 3))
        entry[f"real_tokens_per_s_{arm}_rounds"] = [round(v, 2) for v in rounds(arm, "tokens_per_s")]
    entry.update(ratio_columns("real_tokens_per_s_ratio", round_ratios(rounds("grouped", "tokens_per_s"),
                                                                       rounds("random", "tokens_per_s"))))
    entry.update({
        "tokens_real": {arm: first[arm]["stats"].tokens_real for arm in ("random", "grouped")},
        "val_acc_random": round(acc["random"], 4), "val_acc_grouped": round(acc["grouped"], 4),
        "val_acc_stderr_random": round(math.sqrt(acc["random"] * (1 - acc["random"]) / (n - 1)), 4),
        "val_acc_stderr_grouped": round(math.sqrt(acc["grouped"] * (1 - acc["grouped"]) / (n - 1)), 4),
        "n_validation": n,
        "mcnemar_p": round(mcnemar_exact(first["random"]["correct"], first["grouped"]["correct"]), 4)})
    return entry


def grouping_markdown(f: dict) -> str:
    s = f["length_grouping_setup"]
    lines = [
        f"Command: `{s['command']}` ({environment_line(s)}; nothing else running). Figures in `benchmarks/train.json` "
        "(`length_grouping`).",
        "",
        f"LoRA ({s['lora']}) fine-tuning of {s['model']}, the same train-side examples and {s['steps']} optimizer steps "
        "per run, once with the Trainer's random batches and once with trimllm's length-grouped batches "
        "(`train.group_by_length`, the default), alternating. Padded share = padding positions / positions computed, "
        "counted by the Trainer over the run; real tokens/s = non-padding tokens / training time; s / step = mean "
        f"after {s['warmup']} warm-up steps. Validation accuracy on {s['n_validation']} train-side items "
        "(lm-eval's rule), ± its standard error; p = exact McNemar test on the same items."
        + (f" Speed: median (min–max) over {s['pairs']} alternating pairs, the ratio within each pair; padding and "
           "accuracy: the first pair. " + timing_line(f["length_grouping_noise"]) if "pairs" in s else
           " One alternating pair per task (no spread)."),
        "",
        "| task | examples | batch | padded share random | padded share grouped | real tokens/s random | "
        "real tokens/s grouped | ratio | s / step random | s / step grouped | val acc random | val acc grouped | p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = {"sciq": 1.8, "financial_phrasebank": 1.4}
    verdicts = []
    for task, e in f["length_grouping"].items():
        lines.append(
            f"| {task} | {e['examples']} | {e['batch_size']} | {e['padded_share_random']:.1%} | "
            f"{e['padded_share_grouped']:.1%} | {with_range(e, 'real_tokens_per_s_random')} | "
            f"{with_range(e, 'real_tokens_per_s_grouped')} | **{with_range(e, 'real_tokens_per_s_ratio', 3, 'x')}** | "
            f"{with_range(e, 's_per_step_random', 3)} | {with_range(e, 's_per_step_grouped', 3)} | "
            f"{e['val_acc_random']:.3f} ± {e['val_acc_stderr_random']:.3f} | "
            f"{e['val_acc_grouped']:.3f} ± {e['val_acc_stderr_grouped']:.3f} | {e['mcnemar_p']} |")
        within = abs(e["val_acc_grouped"] - e["val_acc_random"]) <= 2 * e["val_acc_stderr_random"]
        speed = targets.get(task)
        verdicts.append(
            f"{task}: padded share <= 5 % {'met' if e['padded_share_grouped'] <= 0.05 else 'NOT met'}"
            + (f"; tokens/s >= {speed}x {'met' if e['real_tokens_per_s_ratio'] >= speed else 'NOT met'}" if speed else "")
            + f"; accuracy within 2 standard errors {'met' if within else 'NOT met'}.")
    return "\n".join([*lines, "", "Targets: " + " ".join(verdicts)])
