"""Zero-shot baselines of a model on the domain test splits and the general group; writes eval/BASELINES.md.

    python scripts/eval_baselines.py                      # SmolLM2-135M: SciQ and FPB in full, general at --limit 500
    python scripts/eval_baselines.py --model gemma3-270m --general-limit 200 --out eval/BASELINES_gemma.md

Saves the lm-eval results next to the markdown (``<out>.json``).
"""

from __future__ import annotations

import json
import time

import lm_eval
from _common import ROOT, command_line, environment, environment_line, parser

from trimllm.atomic import write_text_atomic
from trimllm.evaluation import domain_scores, evaluate, results_table
from trimllm.modeling import load_model
from trimllm.plan import count_parameters


def main() -> None:
    options = parser(__doc__, "unused", "unused")
    options.set_defaults(out=ROOT / "eval" / "BASELINES.md")
    options.add_argument("--domain-tasks", default="sciq,fpb")
    options.add_argument("--domain-limit", type=int, default=None, help="None = the whole test split")
    options.add_argument("--general-limit", type=int, default=500)
    options.add_argument("--batch-size", type=int, default=16)
    args = options.parse_args()

    model, tokenizer = load_model(args.model, device=args.device)
    runs = [(args.domain_tasks.split(","), args.domain_limit), (["general"], args.general_limit)]
    merged: dict = {"results": {}, "n-samples": {}, "groups": {}}
    seconds = 0.0
    for tasks, limit in runs:
        start = time.perf_counter()
        results = evaluate(model, tokenizer, tasks, limit=limit, batch_size=args.batch_size)
        seconds += time.perf_counter() - start
        for key in merged:
            merged[key].update(results.get(key, {}))

    general = domain_scores(merged).get("general", (float("nan"), 0))[0]
    command = command_line("eval_baselines.py", args)
    text = "\n".join(
        [
            f"# Zero-shot baselines: {args.model}",
            "",
            f"Measured {environment_line(environment(model))}, lm-eval {lm_eval.__version__}; "
            f"{count_parameters(model):,} parameters; {seconds / 60:.1f} min.",
            "",
            "Command:",
            "",
            f"    {command}",
            "",
            f"Domain tasks ({args.domain_tasks}): "
            + ("the whole test side" if args.domain_limit is None else f"the first {args.domain_limit} test documents")
            + f"; general tasks: the first {args.general_limit} test documents each (CPU time limit), "
            "so general numbers are estimates with the stderr shown.",
            "",
            results_table(merged, model),
            f"General mean acc: {general:.4f}.",
            "",
        ]
    )
    write_text_atomic(args.out, text)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(merged, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
