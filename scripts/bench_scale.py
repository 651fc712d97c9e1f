"""Scale: every step of trimllm's pipeline at the shapes of real 1-8 B families, on random weights (no download).

    python scripts/bench_scale.py                                       # the 1 B shapes on CPU, every step
    python scripts/bench_scale.py --families qwen2.5-1.5b --steps score_bi,drop_export,train_lora
    python scripts/bench_scale.py --families llama-3.1-8b,qwen3-8b      # on a GPU
    python scripts/bench_scale.py --part plain                          # trimllm's stage trainer vs Trainer + peft
    python scripts/bench_scale.py --render-only

A model is built from its family's published config values (``FAMILIES``; the weights are random: time, memory
and the machinery do not depend on them), saved once, and each step runs in a child process of its own so that
its peak resident memory is its own: scoring (block influence; the exact task-accuracy scan behind its proxy),
surgery + export + a reload in plain transformers, a few LoRA / QLoRA / full training steps through ``trimllm
train``, distillation from a cached teacher (``distill.cache_k``), validation and the GGUF conversion. Per step:
seconds, peak host (and device) memory, tokens/s. The memory a LoRA step needs at the family's real context is
computed from two measured lengths (linear in tokens, as flash / memory-efficient attention is) and labelled so.

``--part plain`` trains the same LoRA steps (SmolLM2-135M, the same examples in the same order) through trimllm's
stage trainer and through a plain ``transformers.Trainer`` + ``peft`` loop that computes the loss as a user
would (labels -100 on the prompt, logits at every position), alternating the two for the spread.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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
)
from _scale_steps import FAMILIES, STEPS

STEPS_SCRIPT = Path(__file__).with_name("_scale_steps.py")


def main() -> None:
    options = parser(__doc__, "scale.json", "Scale")
    options.add_argument("--families", default="llama-3.2-1b,qwen2.5-1.5b,gemma-3-1b")
    options.add_argument("--steps", default=",".join(STEPS))
    options.add_argument("--part", default="pipeline", choices=["pipeline", "plain"])
    options.add_argument("--max-length", type=int, default=128, help="tokens per row of the training steps")
    options.add_argument("--batch-size", type=int, default=2)
    options.add_argument("--train-steps", type=int, default=2)
    options.add_argument("--rounds", type=int, default=2, help="--part plain: alternating rounds")
    options.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_scale")
    options.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    options.add_argument("--step-timeout", type=int, default=1800, help="seconds one step may take")
    args = options.parse_args()
    figures = json.loads(args.out.read_text()) if args.out.exists() else {"families": {}, "plain": None}
    if args.render_only:
        return publish(figures, args.out, args.markdown, args.section, render(figures))
    if args.part == "plain":
        figures["plain"] = plain_part(args)
        return publish(figures, args.out, args.markdown, args.section, render(figures))
    for family in args.families.split(","):
        figures["families"][family] = {**measure_family(family, args), "command": command_line("bench_scale.py", args)}
        publish(figures, args.out, args.markdown, args.section, render(figures))


def machine() -> str:
    """The line under each table: this machine's device, threads and library versions."""
    import torch

    return environment_line(environment(torch.nn.Linear(1, 1, device="cuda" if torch.cuda.is_available() else "cpu")))


def measure_family(family: str, args) -> dict:
    """Every step of ``args.steps`` at ``family``'s shapes, each in a child process; the model folder is removed
    after (it is ours: built here)."""
    work = args.work / family
    base = work / "model"
    noise = TimingNoise().start()
    built = run_child({"step": "build", "family": family, "out": str(base)}, args)
    steps = {}
    for step in args.steps.split(","):
        spec = {"step": step, "family": family, "model": str(base), "work": str(work / step),
                "max_length": args.max_length // 2 if step == "train_lora_short" else args.max_length,
                "batch_size": args.batch_size, "train_steps": args.train_steps, "params": built["params"]}
        steps[step] = run_child(spec, args)
        shutil.rmtree(spec["work"], ignore_errors=True)  # ours: a 1 B model per training step fills a disk
        print(family, step, json.dumps(steps[step]), flush=True)
    shutil.rmtree(work)
    return {"config": FAMILIES[family], "params": built["params"], "build": built, "steps": steps,
            "context": context_memory(family, steps, args), "environment": machine(), "noise": noise.verdict({})}


def run_child(spec: dict, args) -> dict:
    """One step in a fresh process: its figures, or what went wrong (the last lines of its error output)."""
    try:
        done = subprocess.run([sys.executable, str(STEPS_SCRIPT), json.dumps(spec)], capture_output=True, text=True,
                              timeout=args.step_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {args.step_timeout} s"}
    if done.returncode != 0:  # the exception's line, not a progress bar's
        lines = [line for line in done.stderr.splitlines() if "Error" in line] or done.stderr.strip().splitlines()
        return {"error": lines[-1][:300] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def context_memory(family: str, steps: dict, args) -> dict | None:
    """Peak host memory of a LoRA step at the family's real context (batch 1), from the two measured lengths:
    linear in tokens (computed, not measured)."""
    long, short = steps.get("train_lora", {}), steps.get("train_lora_short", {})
    if "peak_rss_gb" not in long or "peak_rss_gb" not in short:
        return None
    tokens = args.batch_size * (args.max_length - args.max_length // 2)
    per_token = max(0.0, long["peak_rss_gb"] - short["peak_rss_gb"]) / tokens
    context = FAMILIES[family]["max_position_embeddings"]
    at = {n: round(long["peak_rss_gb"] + per_token * (n - args.batch_size * args.max_length), 1)
          for n in (4096, min(context, 32768))}
    return {"per_token_mb": round(per_token * 1024, 3), "lora_step_gb": at, "computed": True}


# ---- the plain stack ----


def plain_part(args) -> dict:
    """tokens/s of the same LoRA steps through trimllm's stage trainer and a plain Trainer + peft loop."""
    rounds, last = {"trimllm": [], "trimllm grouped": [], "plain": []}, {}
    noise = TimingNoise().start()
    for _ in range(args.rounds):
        for name in rounds:
            spec = {"step": "plain" if name == "plain" else "train_lora", "model": args.model,
                    "work": str(args.work / "plain" / name.replace(" ", "_")), "max_length": args.max_length,
                    "batch_size": args.batch_size, "train_steps": args.train_steps}
            last[name] = run_child({**spec, "grouped": name == "trimllm grouped"}, args)
            rounds[name].append(last[name].get("tokens_per_s"))
            shutil.rmtree(spec["work"], ignore_errors=True)  # our own run folder
    verdict = noise.verdict(rounds)
    losses = {name: figures.get("losses") for name, figures in last.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in rounds.items()}
    return {"rounds": rounds, "median": med, "ratio": round(med["trimllm"] / med["plain"], 3),
            "ratio_grouped": round(med["trimllm grouped"] / med["plain"], 3), "noise": verdict, "losses": losses,
            "command": command_line("bench_scale.py", args), "environment": machine()}


# ---- the tables ----


def render(figures: dict) -> str:
    lines = []
    for family, f in figures["families"].items():
        lines += [f"### {family} ({f['params'] / 1e9:.2f} B parameters, random weights)", "",
                  f"Command: `{f.get('command')}`.", f["environment"], "",
                  "| step | seconds | peak host GB | peak GPU GB | tokens/s | notes |", "|---|---|---|---|---|---|"]
        for step, r in f["steps"].items():
            note = r.get("error") or r.get("skipped") or _note(step, r)
            lines.append(f"| {step} | {r.get('seconds', '')} | {r.get('peak_rss_gb', '')} | "
                         f"{r.get('peak_cuda_gb', '')} | {r.get('tokens_per_s') or ''} | {note} |")
        if f.get("context"):
            c = f["context"]
            at = ", ".join(f"{n} tokens: {gb} GB" for n, gb in c["lora_step_gb"].items())
            lines += ["", f"LoRA step at longer rows (computed from the two measured lengths, {c['per_token_mb']} MB "
                      f"per token, linear as with flash / memory-efficient attention): {at}."]
        lines += ["", timing_line(f.get("noise")), ""]
    if not any("cuda" in f["environment"] for f in figures["families"].values()):
        lines += ["GPU rows (llama-3.1-8b, qwen3-8b; LoRA, QLoRA, FSDP): not run, no GPU was lent to this work "
                  "(`python scripts/bench_scale.py --families llama-3.1-8b,qwen3-8b` on one).", ""]
    lines += sizes(figures)
    plain = figures.get("plain")
    if plain:
        lines += ["### trimllm's stage trainer against a plain Trainer + peft loop", "", f"Command: `{plain['command']}`.",
                  plain["environment"], "", "| loop | tokens/s per round | median |", "|---|---|---|"]
        lines += [f"| {k} | {', '.join(str(v) for v in plain['rounds'][k])} | {plain['median'][k]} |"
                  for k in plain["rounds"]]
        lines += ["", f"trimllm / plain: {plain['ratio']}x (same random batches), {plain['ratio_grouped']}x "
                  f"(trimllm's default length-grouped batches); target >= 0.95x: "
                  f"{'met' if plain['ratio'] >= 0.95 else 'NOT met'}.", "", timing_line(plain["noise"])]
    return "\n".join(lines) + "\n"


SIZED = ["llama-3.2-1b", "qwen2.5-1.5b", "gemma-3-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen3-8b"]


def params(family: str) -> int:
    """The family's parameter count, from its config on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(FAMILIES[family])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values))
    return sum(p.numel() for p in model.parameters())


def sizes(figures: dict) -> list[str]:
    """What each step needs by size: weights from the parameter count (bytes per parameter), activations from the
    per-token cost measured on a 1 B shape, scaled by hidden size x blocks. Computed, and labelled so."""
    measured = {f: r["context"]["per_token_mb"] for f, r in figures["families"].items() if r.get("context")}
    if not measured:
        return []
    ref, per_token = next(iter(measured.items()))
    width = {f: FAMILIES[f]["hidden_size"] * FAMILIES[f]["num_hidden_layers"] for f in FAMILIES}
    lines = ["### Sizes and memory (computed)", "",
             f"Weights: 4 bytes per parameter (float32, CPU), 2 (bfloat16, GPU), about 0.56 (QLoRA's NF4 copy). "
             f"Full fine-tuning with AdamW: 16 bytes per parameter (weights, gradients, two moments; split over the "
             f"GPUs by FSDP). LoRA activations per token with checkpointing: {per_token} MB measured on {ref} "
             "(the peak difference between two row lengths), scaled by hidden size x blocks for the others.", "",
             "| family | parameters | weights fp32 / bf16 GB | LoRA step, 8 x 512 tokens, GB (fp32 CPU) | "
             "QLoRA device GB (weights) | full fine-tune GB |", "|---|---|---|---|---|---|"]
    for family in SIZED:
        n = params(family)
        act = per_token * width[family] / width[ref] * 8 * 512 / 1024
        lines.append(f"| {family} | {n / 1e9:.2f} B | {4 * n / 2**30:.1f} / {2 * n / 2**30:.1f} | "
                     f"{4 * n / 2**30 + act:.1f} | {0.56 * n / 2**30:.1f} | {16 * n / 2**30:.0f} |")
    return lines + [""]


def _note(step: str, r: dict) -> str:
    if step == "drop_export":
        return f"reload in plain transformers: largest log-prob difference {r.get('reload_max_abs_logprob')} ({'ok' if r.get('reload_ok') else 'FAILED'})"
    if step == "gguf":
        return f"{r.get('gguf_gb')} GB f16"
    return ""


if __name__ == "__main__":
    main()
