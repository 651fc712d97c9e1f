"""Speed and memory of models, side by side: prefill and decode timing, peak memory in a fresh process, and the
table of ratios against the weight-traffic bound (``trimllm bench`` and ``scripts/bench_inference.py``), and the
machine description every figure is reported with."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from trimllm.timing import (
    fit_threads,
    interleaved_rounds,
    load_now,
    ratio_columns,
    round_ratios,
    rounded,
    warning_line,
    with_range,
)


def environment(model: nn.Module) -> dict:
    """Device, dtype, machine and library versions, for the line under each table."""
    import transformers

    param = next(model.parameters())
    device = str(param.device)
    if param.device.type == "cuda":
        device = torch.cuda.get_device_name(param.device)
    return {"device": device, "dtype": str(param.dtype).replace("torch.", ""),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
            "transformers": transformers.__version__, "date": str(datetime.date.today())}


def environment_line(env: dict) -> str:
    return (f"{env['date']}, {env['device']} {env['dtype']}, {env['machine']}, torch {env['torch']}, "
            f"transformers {env['transformers']}")


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, repeats: int, device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (synchronizing CUDA around each)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- Inference speed of exported models (``trimllm bench``) -------------------------------------------------------


@torch.no_grad()
def prefill(model: nn.Module, ids: torch.Tensor) -> None:
    """The prompt pass of generation: fill the KV cache, LM head on the last position only."""
    model(input_ids=ids, use_cache=True, logits_to_keep=1)


@torch.no_grad()
def decode(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Greedy decoding of ``new_tokens`` after a prompt, with the KV cache; returns the seconds of the decode
    steps alone (the prompt pass is not counted)."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    sync(ids.device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    sync(ids.device)
    return time.perf_counter() - start


def prompt_ids(vocab_size: int, batch: int, length: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 7919 + length)
    return torch.randint(10, vocab_size - 10, (batch, length), generator=generator).to(device)


def speed(models: dict, prompt_len: int = 512, batches: tuple = (1, 8), new_tokens: int = 128, repeats: int = 3,
          log=print) -> tuple[dict, dict]:
    """Prefill and decode tokens/s of every model in interleaved rounds (:func:`trimllm.timing.interleaved_rounds`:
    a warm-up round, then 3 to ``repeats`` rounds). Returns ``({model: {figure: [per round]}}, noise)``."""

    def measure(name: str, warmup: bool) -> dict[str, float]:
        model = models[name]
        device, vocab = next(model.parameters()).device, model.config.vocab_size
        figures = {}
        for b in batches:
            ids = prompt_ids(vocab, b, prompt_len, device)
            figures[f"prefill_b{b}"] = b * prompt_len / median_seconds(lambda ids=ids: prefill(model, ids), 1, device)
        tokens = min(new_tokens, 8) if warmup else new_tokens  # the warm-up needs the kernels, not the length
        figures["decode_b1"] = tokens / decode(model, prompt_ids(vocab, 1, prompt_len, device), tokens)
        return figures

    before, previous = load_now(), torch.get_num_threads()
    threads = fit_threads(before)  # the cores free now: on a shared machine, fewer threads beat a collapse
    what = f" (prefill {prompt_len} tokens at batch {', '.join(map(str, batches))}; decode {new_tokens} tokens)"
    try:
        runs, noise = interleaved_rounds(list(models), measure, repeats, "decode_b1", log, what, load_before=before)
    finally:
        torch.set_num_threads(previous)  # the caller's process keeps its own setting
    noise["threads"] = threads
    return runs, noise


def peak_memory(spec: str, dtype: str, device: str | None, prompt_len: int, batch: int, new_tokens: int) -> int:
    """Peak memory (bytes) of loading ``spec`` and running the prefill and decode workloads, in a fresh process.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak resident set (VmHWM) minus the resident set before
    the model was loaded, so the interpreter and libraries are not counted.
    """
    return in_fresh_process("trimllm.bench", "_memory_probe", [spec, dtype, device, prompt_len, batch, new_tokens])


def in_fresh_process(module: str, function: str, args: list):
    """``module.function(*args)`` in a new Python process (a clean peak-memory count); returns its JSON result."""
    import subprocess
    import sys

    code = (f"import json, sys\nfrom {module} import {function}\n"
            f"print(json.dumps({function}(*json.loads(sys.argv[1]))))\n")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _memory_probe(spec: str, dtype: str, device: str | None, prompt_len: int, batch: int, new_tokens: int) -> int:
    from trimllm.modeling import default_device, load_model

    device = device or default_device()
    cuda = device.startswith("cuda")
    before = 0 if cuda else _status_kb("VmRSS")
    model, _ = load_model(spec, dtype=dtype, device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak: the load's transient copies are not inference
    prefill(model, prompt_ids(model.config.vocab_size, batch, prompt_len, device))
    decode(model, prompt_ids(model.config.vocab_size, 1, prompt_len, device), new_tokens)
    return torch.cuda.max_memory_allocated() if cuda else (_status_kb("VmHWM") - before) * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def compare(specs: list[str], dtype: str = "auto", device: str | None = None, prompt_len: int = 512,
            batches: tuple = (1, 8), new_tokens: int = 128, repeats: int = 3, log=print,
            models: dict | None = None) -> dict:
    """Benchmark ``specs`` (the first is the reference) and return per-model figures with ratios to it and to the
    weight-traffic bound ``params_reference / params_model``. ``models`` maps specs already loaded to their model."""
    from trimllm.modeling import load_model
    from trimllm.plan import count_parameters

    models = dict(models or {})
    for spec in specs:
        if spec not in models:
            models[spec], _ = load_model(spec, dtype=dtype, device=device)
        models[spec].eval()
    runs, noise = speed(models, prompt_len, batches, new_tokens, repeats, log)
    reference = specs[0]
    results = {"models": {}, "noisy": noise["noisy"], "noise": noise,
               "setup": {"prompt_len": prompt_len, "batches": list(batches), "new_tokens": new_tokens,
                         "repeats": repeats, "rounds": noise["rounds"], **environment(models[reference]),
                         "machine": f"{platform.machine()}, {noise['threads']} threads"}}
    for spec in specs:
        params = count_parameters(models[spec])
        memory = peak_memory(spec, dtype, device, prompt_len, max(batches), new_tokens)
        results["models"][spec] = {"params": params, "blocks": models[spec].config.num_hidden_layers,
                                   "peak_memory_bytes": memory, **rounded(runs[spec]), "rounds": runs[spec]}
    ref = runs[reference]
    for spec, row in results["models"].items():
        bound = results["models"][reference]["params"] / row["params"]
        row["bound"] = round(bound, 3)
        ratios = {key: round_ratios(values, ref[key]) for key, values in runs[spec].items()}
        row.update(ratio_columns("decode_speedup", ratios["decode_b1"]))
        for b in batches:
            row.update(ratio_columns(f"prefill_b{b}_speedup", ratios[f"prefill_b{b}"]))
        row["prefill_speedup"] = row[f"prefill_b{max(batches)}_speedup"]
        row["memory_ratio"] = round(row["peak_memory_bytes"] / results["models"][reference]["peak_memory_bytes"], 3)
        row["decode_vs_bound"] = round(row["decode_speedup"] / bound, 3)
        row["prefill_vs_bound"] = round(min(row[f"prefill_b{b}_speedup"] for b in batches) / bound, 3)
    return results


def table(results: dict) -> str:
    """Markdown table of :func:`compare`'s figures: medians with the range of the rounds, and the warning line
    above it when the timing was noisy."""
    batches = results["setup"]["batches"]
    head = ["model", "blocks", "params", *[f"prefill b{b} tok/s" for b in batches], "decode b1 tok/s",
            "peak MiB", "bound", *[f"prefill b{b} speedup" for b in batches], "decode speedup", "memory ratio",
            "speedup / bound (prefill, decode)"]
    warning = warning_line(results.get("noise", {}))
    lines = ([warning, ""] if warning else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["models"].items():
        # a checkpoint is named by its folder, not by the machine's path
        cells = [f"`{Path(name).name}`", r["blocks"], f"{r['params'] / 1e6:.1f}M",
                 *[with_range(r, f"prefill_b{b}") for b in batches], with_range(r, "decode_b1"),
                 f"{r['peak_memory_bytes'] / 2**20:.0f}", f"{r['bound']}x",
                 *[with_range(r, f"prefill_b{b}_speedup", 3, "x") for b in batches],
                 with_range(r, "decode_speedup", 3, "x"), r["memory_ratio"],
                 f"{r['prefill_vs_bound']}, {r['decode_vs_bound']}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
