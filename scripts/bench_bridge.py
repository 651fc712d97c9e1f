"""The linear bridge at each cut, without any training (trimllm.bridge; ReplaceMe, Shopkhoev et al. 2025): blocks
removed in block_influence order, plainly or with the bridge folded into the block before each cut.

    python scripts/bench_bridge.py                 # SmolLM2-135M, SciQ and Financial PhraseBank, 25 % and 50 %

Per task and fraction, on train-side data only: the LM loss on --n-eval held-out texts (full depth, plain removal,
bridge) and the multiple-choice accuracy (lm-eval's rule) on the same held-out questions, with standard errors and
the paired McNemar p of bridge against plain. The bridge is fitted (ridge --ridge) on --n-fit other questions, the
calibration set that also ranks the blocks. Saves benchmarks/bridge.json and the BENCHMARKS.md section.
"""

from __future__ import annotations

import copy
import json
import math

from _common import (
    ROOT,
    command_line,
    environment_line,
    mcnemar_exact,
    parser,
    publish,
    training_environment,
    write_section,
)

from trimllm.bridge import bridge_cuts
from trimllm.data import train_side_splits
from trimllm.modeling import load_model
from trimllm.multiple_choice import mc_correct
from trimllm.prompts import mc_item
from trimllm.scoring import CalibrationSet, run_scorer
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import skipping_all


def main() -> None:
    p = parser(__doc__, "bridge.json", "Linear bridge at the cut (no training)")
    p.add_argument("--tasks", default="sciq,financial_phrasebank")
    p.add_argument("--fractions", default="0.25,0.5")
    p.add_argument("--n-fit", type=int, default=128, help="train-side questions the bridge is fitted on")
    p.add_argument("--n-eval", type=int, default=300, help="other train-side questions it is measured on")
    p.add_argument("--ridge", type=float, default=1e-2)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    if args.render_only:
        write_section(ROOT / "BENCHMARKS.md", args.section, markdown(json.loads(args.out.read_text())))
        return
    model, tokenizer = load_model(args.model, device=args.device)
    rows = [row for task in args.tasks.split(",") for row in task_rows(model, tokenizer, task, args)]
    figures = {"rows": rows, "setup": {**vars(args), "out": None, "command": command_line("bench_bridge.py", args),
                                       **training_environment(model)}}
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures))


def task_rows(model, tokenizer, task: str, args) -> list[dict]:
    """Full depth, then each fraction plain and bridged, on one task's held-out train-side questions."""
    splits = train_side_splits(task, n_validation=args.n_eval, n_calibration=args.n_fit)
    fit_items = [mc_item(task, r) for r in splits["calibration"]]
    eval_items = [mc_item(task, r) for r in splits["validation"]]
    calibration = CalibrationSet(task, fit_items)
    order = [c for c, _ in run_scorer("block_influence", model, tokenizer, calibration, granularity="block",
                                      max_length=args.max_length).ranked()]
    fit = build_lm_batches(tokenizer, calibration.texts(), 8, args.max_length)
    held_out = build_lm_batches(tokenizer, CalibrationSet(task, eval_items).texts(), 8, args.max_length)
    full = mc_correct(model, tokenizer, eval_items, 8, args.max_length)
    rows = []
    for fraction in map(float, args.fractions.split(",")):
        blocks = sorted(int(c.split(".")[1]) for c in order[: round(fraction * len(order))])
        with skipping_all(model, [f"block.{b}" for b in blocks]):
            plain = mc_correct(model, tokenizer, eval_items, 8, args.max_length)
        bridged_model = copy.deepcopy(model)
        report = bridge_cuts(bridged_model, blocks, fit, held_out, args.ridge)
        with skipping_all(bridged_model, [f"block.{b}" for b in blocks]):
            bridged = mc_correct(bridged_model, tokenizer, eval_items, 8, args.max_length)
        del bridged_model
        row = {"task": task, "fraction": fraction, "blocks": blocks, **report, "n": len(eval_items),
               "acc": {"full": _mean(full), "plain": _mean(plain), "bridge": _mean(bridged)},
               "se": {"full": _se(full), "plain": _se(plain), "bridge": _se(bridged)},
               "p_bridge_vs_plain": mcnemar_exact(bridged, plain)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _mean(outcomes: list[bool]) -> float:
    return round(sum(outcomes) / len(outcomes), 4)


def _se(outcomes: list[bool]) -> float:
    p = sum(outcomes) / len(outcomes)
    return round(math.sqrt(p * (1 - p) / len(outcomes)), 4)


def markdown(f: dict) -> str:
    s = f["setup"]
    lines = [
        f"Command: `{s['command']}` ({environment_line(s)}). Figures in `benchmarks/bridge.json`. Accuracy and "
        "loss only (no timing): measured while other jobs shared the cores.",
        "",
        f"{s['model']} with blocks removed in block_influence order, no training at all: plainly, or with a linear "
        f"bridge at each cut (fitted on {s['n_fit']} train-side questions, ridge {s['ridge']}, folded into the MLP "
        "output projection of the block before the cut: the exported model is the family's ordinary architecture). "
        f"LM loss and multiple-choice accuracy (lm-eval's rule) on {s['n_eval']} other train-side questions; p = "
        "exact McNemar, bridge against plain removal.",
        "",
        "| task | removed | LM loss full | plain | bridge | acc full | plain | bridge | p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in f["rows"]:
        loss, acc, se = r["lm_loss"], r["acc"], r["se"]
        lines.append(f"| {r['task']} | {len(r['blocks'])} blocks ({r['fraction']:.0%}) | {loss['full']} | "
                     f"{loss['plain']} | **{loss['bridge']}** | {acc['full']:.3f} ± {se['full']:.3f} | "
                     f"{acc['plain']:.3f} ± {se['plain']:.3f} | **{acc['bridge']:.3f}** ± {se['bridge']:.3f} | "
                     f"{r['p_bridge_vs_plain']:.3g} |")
    lines += ["", *f["notes"]] if f.get("notes") else []  # what the figures say, written after the run
    return "\n".join(lines)


if __name__ == "__main__":
    main()
