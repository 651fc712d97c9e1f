"""llama.cpp build flags against speed: the portable build ``make setup`` makes (``GGML_NATIVE=OFF``, an AVX2 / FMA /
F16C / BMI2 baseline) against a native one (``-march=native``), on the same GGUFs, on the same machine.

Each measurement is a child process that imports the binding from one build's folder, loads one GGUF, warms up and
times a prompt pass and greedy decode steps (:func:`trimllm.llamacpp.timed_run`); the builds alternate within each
round (their order flipped every round) and every round's portable / native ratio is kept, so the cost is reported
as the median with its min and max. A build that cannot run a GGUF on this CPU is recorded with the signal that
killed it, not skipped.

    # a native build beside the venv's portable one (about 5 minutes on 2 cores)
    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip install -q --no-deps --no-cache-dir --no-binary llama-cpp-python \\
        --target /tmp/llama-native llama-cpp-python==0.3.36
    python scripts/bench_llamacpp_build.py --build native=/tmp/llama-native --build portable=

Saves benchmarks/llamacpp_build.json and a section of BENCHMARKS.md. Time it on a quiet machine.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from _common import ROOT, command_line, parser, publish, write_json

from trimllm.gguf import cached_gguf, model_folder
from trimllm.llamacpp_check import build_features, signal_name
from trimllm.timing import allowed_cores

TIMER = """
import json, sys
import llama_cpp
from trimllm.llamacpp import bench_prompt, timed_run
path, prompt_len, new_tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(json.dumps({"system_info": llama_cpp.llama_print_system_info().decode(), "binding": llama_cpp.__file__}),
      flush=True)
llm = llama_cpp.Llama(model_path=path, n_ctx=prompt_len + new_tokens + 8, n_batch=min(prompt_len + new_tokens + 8, 512),
                      n_threads=threads, verbose=False)
timed_run(llm, bench_prompt(llm.n_vocab(), 32), 8)  # warm-up: first-touch of the weights, thread pool
prefill, decode = timed_run(llm, bench_prompt(llm.n_vocab(), prompt_len), new_tokens)
print(json.dumps({"prefill_tok_s": prompt_len / prefill, "decode_tok_s": new_tokens / decode}), flush=True)
"""


def measure(build_dir: str, gguf: Path, prompt_len: int, new_tokens: int) -> dict:
    """One timed run of ``gguf`` with the binding in ``build_dir`` ('' = the venv's own), in a child process."""
    env = dict(os.environ)
    if build_dir:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [build_dir, env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", TIMER, str(gguf), str(prompt_len), str(new_tokens), str(allowed_cores())],
                          capture_output=True, text=True, env=env, timeout=900)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = {k: v for line in lines for k, v in line.items()}
    if done.returncode < 0:
        result["crashed"] = signal_name(-done.returncode)
    elif done.returncode:
        raise RuntimeError(f"the timing child failed on {gguf}:\n{done.stderr[-2000:]}")
    return result


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def run(builds: dict[str, str], variants: dict[str, Path], prompt_len: int, new_tokens: int, rounds: int) -> dict:
    """Every variant under every build, ``rounds`` times, builds alternating (order flipped each round)."""
    names = list(builds)
    raw: dict = {label: {name: [] for name in names} for label in variants}
    info: dict = {}
    for r in range(rounds):
        for label, path in variants.items():
            for name in names if r % 2 == 0 else names[::-1]:
                result = measure(builds[name], path, prompt_len, new_tokens)
                info.setdefault(name, {"features": build_features(result.get("system_info", "")),
                                       "binding": result.get("binding", "")})
                raw[label][name].append(result)
                shown = result.get("crashed") or f"decode {result['decode_tok_s']:.1f} tok/s"
                print(f"round {r + 1}/{rounds} {label} [{name}]: {shown}", file=sys.stderr, flush=True)
    return {"builds": info, "raw": raw, "summary": summarize(raw, names)}


def summarize(raw: dict, names: list[str]) -> dict:
    """Per variant and build: min / median / max tokens/s (or the crash), and the per-round ratio of each build to
    the first one."""
    out = {}
    for label, per_build in raw.items():
        row = {}
        for name in names:
            runs = per_build[name]
            crashed = [r["crashed"] for r in runs if "crashed" in r]
            row[name] = {"crashed": crashed[0]} if crashed else {
                k: spread([r[f"{k}_tok_s"] for r in runs]) for k in ("prefill", "decode")}
        ref = names[0]
        for name in names[1:]:
            if "crashed" in row[name] or "crashed" in row[ref]:
                continue
            row[name]["ratio"] = {k: spread([a[f"{k}_tok_s"] / b[f"{k}_tok_s"]
                                             for a, b in zip(per_build[name], per_build[ref], strict=True)])
                                  for k in ("prefill", "decode")}
        out[label] = row
    return out


def fmt(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def markdown(figures: dict) -> str:
    names = list(figures["builds"])
    ref = names[0]
    lines = [f"{figures['date']}, {platform.machine()} CPU, {figures['threads']} threads, prompt "
             f"{figures['prompt_len']} tokens, {figures['new_tokens']} decoded; {figures['rounds']} interleaved rounds, "
             f"each a fresh process per build; median (min–max). {figures['timing_note']}", ""]
    for name, build in figures["builds"].items():
        lines.append(f"- `{name}` ({figures['flags'].get(name, '')}): CPU features {', '.join(build['features'])}")
    head = ["variant", *[f"{n} {k} tok/s" for n in names for k in ("prefill", "decode")],
            *[f"{n} / {ref} {k}" for n in names[1:] for k in ("prefill", "decode")]]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in figures["summary"].items():
        cells = [f"`{label}`"]
        for n in names:
            cells += [f"crashed ({row[n]['crashed']})"] * 2 if "crashed" in row[n] else \
                [fmt(row[n]["prefill"]), fmt(row[n]["decode"])]
        for n in names[1:]:
            cells += [fmt(row[n]["ratio"][k], 3) if "ratio" in row[n] else "—" for k in ("prefill", "decode")]
        lines.append("| " + " | ".join(cells) + " |")
    for n in names[1:]:
        rows = [r[n]["ratio"] for r in figures["summary"].values() if "ratio" in r[n]]
        crashed = [label for label, r in figures["summary"].items() if "crashed" in r[n] or "crashed" in r[ref]]
        if rows:
            span = {k: (min(r[k]["median"] for r in rows), max(r[k]["median"] for r in rows)) for k in ("prefill", "decode")}
            lines += ["", f"`{n}` / `{ref}`, medians over the variants: decode {span['decode'][0]:.2f}–"
                          f"{span['decode'][1]:.2f}, prefill {span['prefill'][0]:.2f}–{span['prefill'][1]:.2f}"
                          + (f"; crashed: {', '.join(crashed)}" if crashed else "") + "."]
    lines += ["", f"Command: `{figures['command']}`"]
    return "\n".join(lines)


def command(args) -> str:
    """The command line that reproduces the run (each --build / --flags repeated, quoted)."""
    repeated = " ".join(f"--{key} {shlex.quote(value)}" for key in ("build", "flags") for value in getattr(args, key))
    rest = command_line("bench_llamacpp_build.py", args, skip=("out", "render_only", "section", "model", "device",
                                                                "timing_note", "build", "flags"))
    return f"{rest} {repeated}"


def main() -> None:
    options = parser(__doc__, "llamacpp_build.json", "llama.cpp build: portable against native")
    options.add_argument("--build", action="append", default=[],
                         help="NAME=FOLDER holding a llama_cpp package ('' = the venv's own); the first is the reference")
    options.add_argument("--flags", action="append", default=[], help="NAME=CMAKE_ARGS it was built with (shown)")
    options.add_argument("--models", default="smollm2-135m", help="comma-separated models (packaged names, folders)")
    options.add_argument("--quants", default="f16,q8_0,q4_k_m")
    options.add_argument("--prompt-len", type=int, default=512)
    options.add_argument("--new-tokens", type=int, default=128)
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--timing-note", default="Timed on a quiet machine.")
    args = options.parse_args()
    if args.render_only:
        figures = json.loads(args.out.read_text())
        publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures))
        return
    builds = dict(b.split("=", 1) for b in args.build) or {"installed": ""}
    variants = {f"{Path(m).name} {q}": cached_gguf(model_folder(m), q)
                for m in args.models.split(",") for q in args.quants.split(",")}
    figures = run(builds, variants, args.prompt_len, args.new_tokens, args.rounds)
    figures.update(date=str(datetime.date.today()), threads=allowed_cores(), prompt_len=args.prompt_len,
                   new_tokens=args.new_tokens, rounds=args.rounds, timing_note=args.timing_note,
                   flags=dict(f.split("=", 1) for f in args.flags),
                   command=command(args))
    write_json(args.out, figures)
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures))


if __name__ == "__main__":
    main()
