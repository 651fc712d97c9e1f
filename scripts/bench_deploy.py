"""Deployment: depth vs quantization vs both, in llama.cpp. A domain model at full depth (the original) and trimmed,
each converted by llama.cpp's converter and quantizer (``trimllm export --gguf``) at f16, q8_0 and q4_k_m; for
every variant: file size, peak memory, prefill and decode tokens/s (one run, alternating, median of --repeats;
``trimllm bench --runtime llamacpp`` underneath) and domain accuracy on the task's whole test side, scored by
llama.cpp itself (lm-eval on the binding's logits; ``trimllm eval FILE.gguf --runtime llamacpp``).

    python scripts/bench_deploy.py --original runs/study_v2/sciq-none-0.0-0 \\
        --trimmed runs/study_v2/sciq-oneshot-ft-ce-0.25-0 --task sciq

Accuracy records are saved after each variant and a rerun skips them (resumable); --skip-speed keeps the saved
speed figures (time them on a quiet machine). Saves benchmarks/deploy.json and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

from _common import ROOT, command_line, mcnemar_exact, parser, publish, shown_path, write_json, write_section

from trimllm.evaluation import evaluate
from trimllm.gguf import cached_gguf, model_folder
from trimllm.llamacpp import LlamaCppLM, compare
from trimllm.prompts import PREFIX
from trimllm.timing import with_range


def variants(args) -> dict[str, Path]:
    """``{label: GGUF}``: every model at every type, the original first (its f16 is the speed reference)."""
    models = {"original": args.original, **{f"trimmed {Path(p).name}": p for p in args.trimmed.split(",") if p}}
    return {f"{name} {quant}": cached_gguf(model_folder(path), quant)
            for name, path in models.items() for quant in args.quants.split(",")}


def accuracy(path: Path, task: str, limit: int | None) -> dict:
    results = evaluate(LlamaCppLM(path), None, [task], limit=limit, log_samples=True)
    name = PREFIX + task
    metrics = results["results"][name]
    correct = [bool(s["acc"]) for s in sorted(results["samples"][name], key=lambda s: s["doc_id"])]
    return {"acc": metrics["acc,none"], "acc_stderr": metrics["acc_stderr,none"], "n_test": len(correct),
            "correct": correct}


def summary(figures: dict) -> dict:
    """The issue's targets from the rows: depth at f16 against the weight-traffic bound, depth and q4_k_m
    composed, and the smallest / fastest variant within 1 point of the original q4_k_m."""
    rows, acc = figures["speed"]["models"], figures["accuracy"]
    out = {"trimmed": {}}
    original_q4 = rows.get("original q4_k_m")
    for label in rows:
        name, _, quant = label.rpartition(" ")
        if not name.startswith("trimmed") or quant not in ("f16", "q4_k_m"):
            continue
        row = out["trimmed"].setdefault(name, {})
        if quant == "f16":
            row["f16_decode_vs_bound"] = rows[label]["decode_vs_bound"]
        elif original_q4:
            composed = rows[f"{name} f16"]["bound"] * original_q4["decode_speedup"]
            row["q4_decode_speedup"] = rows[label]["decode_speedup"]
            row["q4_expected"] = round(composed, 3)
            row["q4_vs_composed"] = round(rows[label]["decode_speedup"] / composed, 3)
    if "original q4_k_m" in acc:
        base = acc["original q4_k_m"]
        same = [k for k, v in acc.items() if v["acc"] >= base["acc"] - 0.01]
        out["within_1_point_of_original_q4"] = same
        out["smallest"] = min(same, key=lambda k: rows[k]["file_bytes"])
        out["fastest"] = max(same, key=lambda k: rows[k]["decode_tok_s"])
        out["mcnemar_vs_original_q4"] = {k: mcnemar_exact(v["correct"], base["correct"]) for k, v in acc.items()}
    return out


def markdown(figures: dict) -> str:
    rows, acc, s = figures["speed"]["models"], figures["accuracy"], figures.get("summary", {})
    setup = figures["speed"]["setup"]
    lines = [
        f"Task `{figures['task']}`, whole test side unless stated (n below); original `{figures['original']}`. "
        f"{setup['runtime']}, {setup['threads']} threads, prompt {setup['prompt_len']} tokens, {setup['new_tokens']} "
        f"decoded, median{' (min–max)' if 'rounds' in setup else ''} of {setup.get('rounds', setup['repeats'])} alternating "
        f"rounds, {figures.get('date', '')}, {platform.machine()} CPU. "
        f"{figures.get('timing_note', '')}",
        "",
        "| variant | file MiB | peak MiB | params | prefill tok/s | decode tok/s | decode speedup | bound | acc | ± | n | p vs original q4_k_m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        a = acc.get(label, {})
        p = s.get("mcnemar_vs_original_q4", {}).get(label)
        p = "" if p is None else f"{p:.3g}"
        cells = [f"`{label}`", f"{r['file_bytes'] / 2**20:.0f}", f"{r['peak_memory_bytes'] / 2**20:.0f}",
                 f"{r['params'] / 1e6:.1f}M", with_range(r, "prefill_tok_s"), with_range(r, "decode_tok_s"),
                 with_range(r, "decode_speedup", 3, "x"),
                 f"{r['bound']}x", f"{a['acc']:.3f}" if a else "", f"{a['acc_stderr']:.3f}" if a else "",
                 a.get("n_test", ""), p]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Targets:"]
    for name, t in s.get("trimmed", {}).items():
        lines.append(f"- `{name}`: f16 decode speedup / weight-traffic bound = {t.get('f16_decode_vs_bound')} "
                     f"(target >= 0.95: {'met' if t.get('f16_decode_vs_bound', 0) >= 0.95 else 'not met'}); "
                     f"q4_k_m decode speedup over the original f16 = {t.get('q4_decode_speedup')}x against "
                     f"bound x original q4_k_m speedup = {t.get('q4_expected')}x, ratio {t.get('q4_vs_composed')} "
                     f"(target >= 0.9, the two compose: {'met' if t.get('q4_vs_composed', 0) >= 0.9 else 'not met'}).")
    if "smallest" in s:
        lines.append(f"- Within 1 point of the original q4_k_m's accuracy: {', '.join(f'`{k}`' for k in s['within_1_point_of_original_q4'])}; "
                     f"smallest `{s['smallest']}`, fastest `{s['fastest']}`.")
    lines += ["", f"Command: `{figures['command']}`"]
    return "\n".join(lines)


def main() -> None:
    options = parser(__doc__, "deploy.json", "Deployment: depth vs quantization vs both")
    options.add_argument("--original", default="runs/study_v2/sciq-none-0.0-0")
    options.add_argument("--trimmed", default="runs/study_v2/sciq-oneshot-ft-ce-0.25-0",
                         help="comma-separated trimmed models of the same task")
    options.add_argument("--task", default="sciq")
    options.add_argument("--quants", default="f16,q8_0,q4_k_m")
    options.add_argument("--limit", type=int, default=None, help="fewer test documents (a quick try)")
    options.add_argument("--prompt-len", type=int, default=512)
    options.add_argument("--new-tokens", type=int, default=128)
    options.add_argument("--repeats", type=int, default=5)
    options.add_argument("--skip-speed", action="store_true", help="keep the speed figures saved in --out")
    options.add_argument("--timing-note", default="Timed on a quiet machine.")
    args = options.parse_args()
    if args.render_only:
        write_section(ROOT / "BENCHMARKS.md", args.section, markdown(json.loads(args.out.read_text())))
        return
    figures = json.loads(args.out.read_text()) if args.out.is_file() else {"accuracy": {}}
    figures.update(task=args.task, original=shown_path(Path(args.original), ROOT), timing_note=args.timing_note,
                   command=command_line("bench_deploy.py", args, skip=("out", "render_only", "section", "skip_speed",
                                                                       "timing_note", "model", "device")))
    files = variants(args)
    if not (args.skip_speed and "speed" in figures):
        figures["speed"] = compare(files, args.prompt_len, args.new_tokens, args.repeats)
        write_json(args.out, figures)
    for label, path in files.items():
        if label not in figures["accuracy"]:
            figures["accuracy"][label] = accuracy(path, args.task, args.limit)
            write_json(args.out, figures)
    figures["summary"] = summary(figures)
    figures["date"] = str(datetime.date.today())
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures))


if __name__ == "__main__":
    main()
