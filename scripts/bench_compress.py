"""``trimllm compress`` at several tolerances: the depth it chooses, the verified drop, the llama.cpp speed-up and the
search's share of the compute.

    python scripts/bench_compress.py                                   # SciQ and Financial PhraseBank, 0.5 / 1 / 3 points
    python scripts/bench_compress.py --tasks sciq=recipes/science.yaml --set train.stage0_steps=0 \\
        --set model.name=runs/study_v3/sciq-full-0.0-0/final         # start from a full-depth fine-tune already made
                                                                       # (rows of other tasks in --out are kept)
    python scripts/bench_compress.py --render-only                     # BENCHMARKS.md "Compress" from the JSON

One compress folder per task in --work: the tolerances share its reference, estimates, probes and healed models
(compress.json keeps them by depth), so the second and third tolerance cost only the depths the first did not try.
Saves benchmarks/compress.json and the BENCHMARKS.md section. Speed comes from the proof's llama.cpp table (median
of interleaved rounds with their range; the noise check's verdict is shown): time it on a quiet machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import ROOT, command_line, parser, publish, timing_line

from trimllm.compress_report import undecided
from trimllm.compression import compress
from trimllm.depth_search import upper_bound
from trimllm.validation import load_recipe

RECIPES = {"sciq": "recipes/science.yaml", "financial_phrasebank": "recipes/finance.yaml"}
# issue 32's targets at a 1-point tolerance: (share of blocks removed, decode speed-up at the same quantization)
TARGETS = {"financial_phrasebank": (0.40, 1.35), "sciq": (0.20, None)}
SEARCH_SHARE = 0.30


def main() -> None:
    options = parser(__doc__, "compress.json", "Compress")
    options.add_argument("--tasks", default=",".join(f"{t}={r}" for t, r in RECIPES.items()),
                         help="task=recipe pairs, comma-separated")
    options.add_argument("--tolerances", default="0.5,1,3", help="points, comma-separated")
    options.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_compress")
    options.add_argument("--set", action="append", default=[], help="a key=value override of every recipe")
    options.add_argument("--note", default=None, help="a caveat of this run, printed under the table")
    args = options.parse_args()
    markdown = ROOT / "BENCHMARKS.md"
    if args.render_only:
        figures = json.loads(args.out.read_text())
        publish(figures, args.out, markdown, args.section, render(figures))
        return
    for pair in args.tasks.split(","):
        task, recipe_path = pair.split("=")
        command = command_line("bench_compress.py", args).replace(f"--tasks {args.tasks}", f"--tasks {pair}")
        for tolerance in map(float, args.tolerances.split(",")):
            recipe = load_recipe(ROOT / recipe_path, [f"output_dir={args.work / task}", *args.set], job="compress")
            figure = {**row(task, tolerance, compress(recipe, tolerance)), "command": command, "note": args.note}
            figures = previous(args.out)  # read again: another task's run may have saved rows meanwhile
            figures["runs"][f"{task} {tolerance:g}"] = figure
            publish(figures, args.out, markdown, args.section, render(figures))


def previous(out: Path) -> dict:
    """The figures saved so far: a run of one task keeps the other tasks' rows (each row carries its command), so
    the tasks can run one after the other or side by side."""
    return json.loads(out.read_text()) if out.exists() else {"runs": {}}


def row(task: str, tolerance: float, state: dict) -> dict:
    """One task x tolerance: the choice, its verification and the proof's speed-ups over the original."""
    choice, proof = state["choice"], state["proof"]
    heal = state["heals"].get(str(choice["removed"]))
    speed = proof.get("speed", {}).get("models", {})
    quant = proof.get("test", {}).get("quant")
    name = f"removed_{choice['removed']:02d}"
    decode = {q: speed.get(f"compressed {q}", {}).get("decode_speedup") for q in ("f16", quant)}
    same_quant = None
    if f"compressed {quant}" in speed:  # the compressed model at quant over the original at the same quant (none: no cut)
        same_quant = round(speed[f"compressed {quant}"]["decode_tok_s"] / speed[f"original {quant}"]["decode_tok_s"], 3)
    return {"task": task, "tolerance": tolerance, "removed": choice["removed"], "n_blocks": choice["n_blocks"],
            "drop": heal["drop"] if heal else 0.0, "se": heal["se"] if heal else 0.0,
            "bound": upper_bound(heal["drop"], heal["se"], choice["confidence"]) if heal else 0.0,
            "decode_speedup_f16": decode["f16"], "decode_speedup_quant_same": same_quant, "quant": quant,
            "search_share": choice["search_share"], "test": proof.get("test"), "gguf": name,
            "search_steps_share": (round(choice["search_steps"] / choice["healing_steps"], 3)
                                   if choice.get("healing_steps") else None),
            "undecided": [line.removeprefix("- ") for line in undecided(state) if line],
            "noise": proof.get("speed", {}).get("noise")}


def render(figures: dict) -> str:
    head = ["task", "tolerance", "blocks removed", "verified drop (bound)", "decode f16 vs original f16",
            "decode quant vs original quant", "test acc llama.cpp (original → compressed)", "search share of the healing (time, steps)"]
    commands = dict.fromkeys(r["command"] for r in figures["runs"].values())
    lines = [*(f"Command: `{c}`." for c in commands), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    verdicts = []
    for r in figures["runs"].values():
        test = r.get("test") or {}
        acc = (f"{test['original']['value']:.3f} → {test['compressed']['value']:.3f}" if test else "")
        steps = f" ({r['search_steps_share']:.0%} of its steps)" if r.get("search_steps_share") is not None else ""
        share = f"{r['search_share']:.0%}{steps}" if r["search_share"] is not None else "no healing"
        lines.append(f"| {r['task']} | {r['tolerance']:g} | {r['removed']} of {r['n_blocks']} "
                     f"({r['removed'] / r['n_blocks']:.0%}) | {r['drop']:+.2f} ± {r['se']:.2f} ({r['bound']:.2f}) | "
                     f"{_x(r['decode_speedup_f16'])} | {_x(r['decode_speedup_quant_same'])} ({r['quant']}) | {acc} | {share} |")
        verdicts += targets(r) + [f"- {r['task']} at {r['tolerance']:g}: {u}" for u in r.get("undecided", [])]
    notes = list(dict.fromkeys(f"- {r['task']}: {r['note']}" for r in figures["runs"].values() if r.get("note")))
    noise = next((r["noise"] for r in figures["runs"].values() if r.get("noise")), None)
    return "\n".join(lines + ["", timing_line(noise), *notes, "", *verdicts]) + "\n"


def _x(ratio: float | None) -> str:
    return f"{ratio}x" if ratio is not None else "— (no cut)"


def targets(r: dict) -> list[str]:
    """issue 32's targets at a 1-point tolerance, met or not, with the figure."""
    if r["tolerance"] != 1.0 or r["task"] not in TARGETS:
        return []
    share, speed = TARGETS[r["task"]]
    removed = r["removed"] / r["n_blocks"]
    lines = [f"- {r['task']} at 1 point: {removed:.0%} of the blocks removed (target >= {share:.0%}: "
             f"{'met' if removed >= share else 'NOT met'})"]
    if speed is not None and r["decode_speedup_quant_same"] is not None:
        met = r["decode_speedup_quant_same"] >= speed
        lines.append(f"- {r['task']} at 1 point: decode {r['decode_speedup_quant_same']}x at {r['quant']} "
                     f"(target >= {speed}x: {'met' if met else 'NOT met'})")
    if r["search_share"] is not None:
        lines.append(f"- {r['task']} at 1 point: search {r['search_share']:.0%} of the final healing (target <= "
                     f"{SEARCH_SHARE:.0%}: {'met' if r['search_share'] <= SEARCH_SHARE else 'NOT met'})")
    return lines


if __name__ == "__main__":
    main()
