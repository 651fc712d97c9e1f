"""How far `trimllm bench`'s figures can be trusted, measured: the same comparison quiet and beside busy processes
(``--part noise``), and the deployment shapes in llama.cpp as ``make setup`` now builds it (``--part portable``).

    python scripts/bench_noise.py --part noise       # about 8 minutes on a 2-core CPU: quiet, then beside --busy
    python scripts/bench_noise.py --part portable    # about 3 minutes

``noise``: SmolLM2-135M against --trimmed (by default ``scripts/bench_inference.py``'s 25 % export), once quiet and
once while --busy bounded busy-loop processes run beside it (the script starts and stops them), each with
``trimllm bench``'s defaults (:func:`trimllm.bench.compare`), timed end to end. ``portable``: the same two models as
GGUF at f16 / q8_0 / q4_k_m through :func:`trimllm.llamacpp.compare`. A busy run made before threads were fitted to
the free cores, kept in the JSON as ``busy_2_threads``, is shown beside the new ones. Run on an otherwise quiet
machine. Saves benchmarks/bench_noise.json or benchmarks/deploy_speed_portable.json and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, parser, publish, write_json

from trimllm.bench import compare
from trimllm.bench import table as bench_table
from trimllm.llamacpp import table as llamacpp_table

TRIMMED = ".cache/trimllm/bench/smollm2-135m-drop-3-12-13-14-15-16-17-25"
BUSY = "import time\nend = time.time() + 1800\nwhile time.time() < end: pass\n"
SECTIONS = {"noise": "Speed figures on a quiet and a busy machine",
            "portable": "Deployment speed: the portable llama.cpp build"}
OUTS = {"noise": "bench_noise.json", "portable": "deploy_speed_portable.json"}


def timed_compare(specs: list[str], busy: int) -> tuple[dict, float]:
    """:func:`trimllm.bench.compare` with its defaults beside ``busy`` busy-loop processes; (results, wall seconds)."""
    workers = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        time.sleep(2 if busy else 0)
        started = time.perf_counter()
        results = compare(specs)
        return results, time.perf_counter() - started
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def noise_markdown(figures: dict, original: str, trimmed: str) -> str:
    q, f = figures["quiet"], figures["busy_threads_fitted"]
    b = figures.get("busy_2_threads")
    elapsed = figures["elapsed_s"]

    def rel(run, key):
        return run["models"][original][key] / q["models"][original][key]

    lines = [
        "`trimllm bench` with its defaults (prompt 512 tokens, prefill batch 1 and 8, 128 decoded tokens, "
        f"{q['setup']['repeats']} rounds after a warm-up), SmolLM2-135M against its 22-block export (`scripts/bench_inference.py`'s 25 % model), "
        f"on the same 2-core VM on {figures['date']}: quiet (nothing else ran), and with {figures['busy']} busy-loop "
        "process(es) beside it, before thread fitting (torch at 2 threads; the run made before `timing.free_cores`) "
        "and after it (torch at the cores left free). Figures in `benchmarks/bench_noise.json`.",
        "",
        f"**Quiet** ({elapsed['quiet']:.0f} s wall, {q['noise']['rounds']} rounds; other processes "
        f"{q['noise']['other_load']} of {q['noise']['cores']} cores; no warning):",
        "", bench_table(q), ""]
    if b:
        lines += [f"**Busy, 2 threads** ({elapsed['busy_2_threads']:.0f} s wall; the run before `free_cores`):",
                  "", bench_table(b), ""]
    lines += [f"**Busy, threads fitted** ({elapsed['busy_threads_fitted']:.0f} s wall, torch at "
              f"{f['noise']['threads']} thread(s)):", "", bench_table(f), "",
              "- The noise check: the quiet run prints no warning; the busy runs print one line above the table "
              "(\"other processes kept 1.0 of the 2 cores ... busy while timing\") and say `\"noisy\": true`."]
    if b:
        lines.append(f"- Threads: with 2 threads beside one busy process the original's decode fell to "
                     f"{rel(b, 'decode_b1'):.2f} of quiet and prefill (batch 8) to {rel(b, 'prefill_b8'):.2f}: a "
                     "collapse (the second thread waits for a core the other process holds at every "
                     "synchronisation), not the 0.5 that sharing half the machine costs. With threads fitted to the "
                     f"free cores: decode {rel(f, 'decode_b1'):.2f} (decode reads the weights once per token: one core "
                     f"nearly carries it), prefill (batch 8) {rel(f, 'prefill_b8'):.2f}: in proportion.")
        lines.append(f"- Ratios: the trimmed model's decode speedup is {q['models'][trimmed]['decode_speedup']}x quiet, "
                     f"{b['models'][trimmed]['decode_speedup']}x busy before fitting (range "
                     f"{b['models'][trimmed]['decode_speedup_range']}), {f['models'][trimmed]['decode_speedup']}x busy "
                     "after it: interleaved rounds keep the ratio close even on a busy machine; the absolute tokens/s "
                     "are not.")
    lines += [f"- Duration: the default comparison of two SmolLM2-sized models took {elapsed['quiet']:.0f} s "
              f"({elapsed['quiet'] / 60:.1f} min) on the quiet 2-core CPU (target <= 3 min: "
              f"{'met' if elapsed['quiet'] <= 180 else 'NOT met'}), loads and the two peak-memory processes included."
              + ("" if "quiet_again" not in figures else
                 f" Under the former default of up to 5 rounds a quiet run ({figures['quiet_again']['note']}; other "
                 f"processes {figures['quiet_again']['other_load']} of the cores) took "
                 f"{figures['quiet_again']['elapsed_s']:.0f} s: its rounds did not settle within 5 % after 3, so it ran "
                 f"{figures['quiet_again']['rounds']}; so the default is now {q['setup']['repeats']} rounds "
                 "(`--repeats N` for more, stopping after 3 once every decode figure is within 5 %)."),
              "", f"Command: `{figures['command']}`"]
    return "\n".join(lines)


def portable_markdown(r: dict, trimmed: str) -> str:
    s, n, rows = r["setup"], r["noise"], r["models"]
    name = Path(trimmed).name
    orig_q4, trim_f16, trim_q4 = rows["smollm2-135m q4_k_m"], rows[f"{name} f16"], rows[f"{name} q4_k_m"]
    composed = trim_f16["bound"] * orig_q4["decode_speedup"]

    def span(key: str) -> str:  # over the original's quantized variants
        values = [rows[f"smollm2-135m {q}"][key] for q in ("q8_0", "q4_k_m")]
        return f"{min(values):.2f}-{max(values):.2f}"

    return "\n".join([
        f"The Deployment tables' shapes (SmolLM2-135M at full depth, and with 8 of its 30 blocks removed: 106.2 M "
        f"parameters, as the study's 25 % models) in llama.cpp built as `make setup` builds it now: {s['build']}. "
        f"{s['runtime']}, {s['threads']} threads, prompt {s['prompt_len']} tokens, {s['new_tokens']} decoded; median "
        f"(min–max) of {s['rounds']} interleaved rounds, speedups the median (min–max) of the per-round ratios. Timed "
        f"on a quiet machine: other processes used {n['other_load']} of {n['cores']} cores while timing; "
        f"{'NOISY: ' + '; '.join(n['reasons']) if n['noisy'] else 'no noise warning'}. {r.get('date', '')}, x86_64 "
        "CPU (the VM that also measured the native build above it: this one is slower in absolute terms than the one "
        "of 2026-12-03, so compare ratios, not tokens/s, across the two tables). The models are the packaged SmolLM2 "
        "and a block-influence drop of it, not the study's tuned models: speed depends on the shapes, not on the "
        "weights.",
        "",
        llamacpp_table(r),
        "",
        f"- Trimmed f16 decode speedup / weight-traffic bound = {trim_f16['decode_vs_bound']} (target >= 0.95: "
        f"{'met' if trim_f16['decode_vs_bound'] >= 0.95 else 'not met'}; native build 2026-12-03: 0.983).",
        f"- Trimmed q4_k_m decode speedup over the original f16 = {trim_q4['decode_speedup']}x against bound x "
        f"original q4_k_m speedup = {composed:.3f}x, ratio {trim_q4['decode_speedup'] / composed:.3f} (target >= "
        f"0.9, the two compose: {'met' if trim_q4['decode_speedup'] / composed >= 0.9 else 'not met'}).",
        f"- With the portable build, q8_0 / q4_k_m prompt processing runs at {span('prefill_speedup')}x the original "
        "f16 (native 2026-12-03: 1.13-1.25x): their integer dot products ran on AVX512-VNNI natively, on AVX2 now. "
        f"Decode, which reads the weights once per token, gains from the smaller types ({span('decode_speedup')}x).",
        "",
        f"Command: `{r['command']}`",
    ])


def main() -> None:
    options = parser(__doc__, "bench_noise.json", "")
    options.add_argument("--part", choices=list(SECTIONS), default="noise")
    options.add_argument("--trimmed", default=TRIMMED, help="the trimmed model (a folder)")
    options.add_argument("--busy", type=int, default=1, help="busy-loop processes beside the busy run")
    args = options.parse_args()
    out = args.out if args.out.name != "bench_noise.json" else ROOT / "benchmarks" / OUTS[args.part]
    section = args.section or SECTIONS[args.part]
    original = args.model
    figures = json.loads(out.read_text()) if out.is_file() else {}
    command = f"python scripts/bench_noise.py --part {args.part} --model {original} --trimmed {args.trimmed}"
    if args.part == "noise":
        if not args.render_only:
            specs = [original, args.trimmed]
            figures["quiet"], quiet_s = timed_compare(specs, 0)
            figures["busy_threads_fitted"], busy_s = timed_compare(specs, args.busy)
            figures["elapsed_s"] = {**figures.get("elapsed_s", {}), "quiet": round(quiet_s, 1),
                                    "busy_threads_fitted": round(busy_s, 1)}
            figures.update(busy=args.busy, date=time.strftime("%Y-%m-%d"), command=f"{command} --busy {args.busy}")
            write_json(out, figures)
        body = noise_markdown(figures, original, args.trimmed)
    else:
        if not args.render_only:
            from trimllm.gguf import cached_gguf, model_folder
            from trimllm.llamacpp import compare as llamacpp_compare

            variants = {f"{Path(m).name} {q}": cached_gguf(model_folder(m), q)
                        for m in (original, args.trimmed) for q in ("f16", "q8_0", "q4_k_m")}
            figures = llamacpp_compare(variants)
            figures.update(date=time.strftime("%Y-%m-%d"), command=command)
            write_json(out, figures)
        body = portable_markdown(figures, args.trimmed)
    publish(figures, out, ROOT / "BENCHMARKS.md", section, body)


if __name__ == "__main__":
    main()
