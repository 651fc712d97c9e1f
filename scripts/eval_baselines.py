"""Zero-shot baselines of a model on the domain test splits and the general group; writes eval/BASELINES.md.

    python scripts/eval_baselines.py                      # SmolLM2-135M: SciQ and FPB in full, general at --limit 500
    python scripts/eval_baselines.py --model gemma3-270m --general-limit 200 --out eval/BASELINES_gemma.md

Saves the lm-eval results next to the markdown (``<out>.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import lm_eval
import torch
import transformers

from trimllm.evaluation import domain_scores, evaluate, results_table
from trimllm.modeling import load_model
from trimllm.plan import count_parameters

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--domain-tasks", default="sciq,fpb")
    parser.add_argument("--domain-limit", type=int, default=None, help="None = the whole test split")
    parser.add_argument("--general-limit", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "BASELINES.md")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
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
    command = (
        f"python scripts/eval_baselines.py --model {args.model} --domain-tasks {args.domain_tasks} "
        f"--general-limit {args.general_limit} --batch-size {args.batch_size}"
        + (f" --domain-limit {args.domain_limit}" if args.domain_limit else "")
    )
    text = "\n".join(
        [
            f"# Zero-shot baselines: {args.model}",
            "",
            f"Measured {datetime.date.today()} on {platform.machine()} CPU ({torch.get_num_threads()} threads), "
            f"float32, {count_parameters(model):,} parameters; torch {torch.__version__}, "
            f"transformers {transformers.__version__}, lm-eval {lm_eval.__version__}; {seconds / 60:.1f} min.",
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
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(merged, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
