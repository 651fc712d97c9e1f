"""llama.cpp as the runtime: a GGUF loaded through ``llama-cpp-python``, its greedy continuation, its log-likelihoods
as an lm-eval model (``trimllm eval FILE.gguf --runtime llamacpp``), and its speed and memory
(``trimllm bench --runtime llamacpp``). Nothing here falls back to transformers: a GGUF llama.cpp cannot load is
an error."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from lm_eval.api.model import LM

from trimllm.llamacpp_check import build_features
from trimllm.modeling import ModelLoadError
from trimllm.timing import (
    allowed_cores,
    free_cores,
    interleaved_rounds,
    load_now,
    ratio_columns,
    round_ratios,
    rounded,
    warning_line,
    with_range,
)

EVAL_CONTEXT = 2048  # tokens of the scoring context (trimllm's tasks: a few hundred at most)


def open_gguf(path: str | Path, n_ctx: int = EVAL_CONTEXT, logits_all: bool = False, n_threads: int | None = None):
    """A ``llama_cpp.Llama`` on ``path`` (CPU, quiet); :class:`ModelLoadError` when llama.cpp cannot load it,
    :class:`~trimllm.llamacpp_check.LlamaCppCrash` when the installed build crashes on its tensor types here."""
    from trimllm.gguf import check_tooling
    from trimllm.llamacpp_check import ensure_runnable

    check_tooling()
    from llama_cpp import Llama

    path = Path(path).expanduser()
    if path.suffix == ".gguf" and not path.exists():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelLoadError(f"{path} is not a .gguf file; the llama.cpp runtime takes a GGUF (`trimllm export "
                             "MODEL --gguf FILE.gguf` writes one)")
    ensure_runnable(path)  # once per process and tensor-type set: a native crash becomes one message, not a segfault
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=n_threads or allowed_cores(),
                     logits_all=logits_all, verbose=False)
    except ValueError as err:
        raise ModelLoadError(f"llama.cpp could not load {path}: {err}") from None


def last_logits(llm) -> np.ndarray:
    """The logits of the last token llama.cpp evaluated (copied out of its context)."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


def greedy(llm, ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy continuation of ``ids`` (no stop at end-of-text, as ``generate`` with ``min_new_tokens``) and the
    log-probabilities of the first generated position."""
    llm.reset()
    llm.eval(ids)
    logits = last_logits(llm)
    first = logits - np.logaddexp.reduce(logits)
    out = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(logits)))
        llm.eval([out[-1]])
        logits = last_logits(llm)
    return out, first


class LlamaCppLM(LM):
    """An lm-eval model on a GGUF, run by llama.cpp: ``loglikelihood`` for multiple-choice tasks, ``generate_until``
    (greedy) for generation tasks. Requests are tokenized as lm-eval's HFLM does (trailing spaces of the context
    move to the continuation; the continuation's tokens are those of context + continuation after the
    context's), and consecutive requests reuse llama.cpp's KV cache for a shared prefix (the choices of one
    question)."""

    def __init__(self, path: str | Path, add_bos_token: bool | None = None, n_ctx: int = EVAL_CONTEXT):
        super().__init__()
        self.path = Path(path)
        self.llm = open_gguf(self.path, n_ctx=n_ctx, logits_all=True)
        arch = str(self.llm.metadata.get("general.architecture", ""))
        # lm-eval's HFLM adds no BOS token to its requests, except for Gemma models, which need one.
        self.add_bos = arch.startswith("gemma") if add_bos_token is None else add_bos_token
        self.n_ctx = n_ctx

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _prefix(self) -> list[int]:
        return [self.llm.token_bos()] if self.add_bos else []

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        prefix = self._prefix() or ([] if context_ids else [self.llm.token_eos()])
        return prefix + context_ids, whole[len(context_ids):]

    def score(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
        """Sum of log-probabilities of ``continuation_ids`` after ``context_ids``, and whether each is the argmax."""
        tokens = (context_ids + continuation_ids)[-self.n_ctx:]
        first = len(tokens) - len(continuation_ids)  # position of the first continuation token
        cached = self.llm.input_ids[: self.llm.n_tokens].tolist()
        common = next((i for i, (a, b) in enumerate(zip(cached, tokens, strict=False)) if a != b), min(len(cached), len(tokens)))
        self.llm.n_tokens = min(common, first - 1)  # keep the cache up to there; the logits from there are needed
        self.llm.eval(tokens[self.llm.n_tokens:])
        logits = self.llm.scores[first - 1: len(tokens) - 1].astype(np.float64)
        logprobs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        picked = logprobs[np.arange(len(continuation_ids)), continuation_ids]
        return float(picked.sum()), bool((logits.argmax(axis=1) == np.asarray(continuation_ids)).all())

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        return [self.score(*self.encode_pair(*request.args))
                for request in tqdm(requests, disable=disable_tqdm, desc="llama.cpp log-likelihoods")]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the llama.cpp runtime scores multiple-choice and generation tasks; perplexity "
                                  "tasks run in transformers (`trimllm eval MODEL_FOLDER`)")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in requests:
            context, options = request.args
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            done = self.llm.create_completion(context, max_tokens=int(options.get("max_gen_toks", 256)),
                                              temperature=0.0, top_k=1, stop=until or None)
            outputs.append(done["choices"][0]["text"])
        return outputs


# --- Speed and memory (``trimllm bench --runtime llamacpp``) --------------------------------------------------------


def gguf_params(path: str | Path) -> int:
    """Parameters stored in a GGUF (every tensor's elements; a tied embedding counted once)."""
    import gguf

    return int(sum(int(t.n_elements) for t in gguf.GGUFReader(path).tensors))


def timed_run(llm, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """Seconds of the prompt pass and of ``new_tokens`` greedy decode steps (KV cache, batch 1)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    token = int(np.argmax(last_logits(llm)))
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
    return prefill, time.perf_counter() - start


def bench_prompt(n_vocab: int, length: int) -> list[int]:
    return np.random.default_rng(length).integers(10, n_vocab - 10, size=length).tolist()


def speed(paths: list[str], prompt_len: int, new_tokens: int, repeats: int, log=print) -> tuple[dict, dict]:
    """Prefill and decode tokens/s of every GGUF in interleaved rounds (:func:`trimllm.timing.interleaved_rounds`:
    a warm-up round, then 3 to ``repeats``). Returns ``({path: {figure: [per round]}}, noise)``."""
    before = load_now()
    threads = free_cores(before)  # the cores free now: on a shared machine, fewer threads beat a collapse
    models = {p: open_gguf(p, n_ctx=prompt_len + new_tokens + 8, n_threads=threads) for p in paths}

    def measure(path: str, warmup: bool) -> dict[str, float]:
        llm = models[path]
        tokens = min(new_tokens, 8) if warmup else new_tokens
        prefill, decode = timed_run(llm, bench_prompt(llm.n_vocab(), prompt_len), tokens)
        return {"prefill_tok_s": prompt_len / prefill, "decode_tok_s": tokens / decode}

    what = f" (prefill {prompt_len} tokens, decode {new_tokens})"
    runs, noise = interleaved_rounds(list(models), measure, repeats, "decode_tok_s", log, what, load_before=before)
    noise["threads"] = threads
    for llm in models.values():
        llm.close()
    return runs, noise


def peak_memory(path: str, prompt_len: int, new_tokens: int) -> int:
    """Peak resident memory (bytes) of loading ``path`` in llama.cpp and running the prefill + decode workload,
    in a fresh process, minus the process's resident memory before the load."""
    from trimllm.bench import in_fresh_process

    return in_fresh_process("trimllm.llamacpp", "_memory_probe", [path, prompt_len, new_tokens])


def _memory_probe(path: str, prompt_len: int, new_tokens: int) -> int:
    import llama_cpp  # noqa: F401  (the library's own memory is not the model's)

    from trimllm.bench import _status_kb

    before = _status_kb("VmRSS")
    llm = open_gguf(path, n_ctx=prompt_len + new_tokens + 8)
    timed_run(llm, bench_prompt(llm.n_vocab(), prompt_len), new_tokens)
    peak = (_status_kb("VmHWM") - before) * 1024
    llm.close()
    return peak


def compare(variants: dict[str, Path], prompt_len: int = 512, new_tokens: int = 128, repeats: int = 3,
            log=print) -> dict:
    """Speed, peak memory, file size and parameters of GGUF ``variants`` (``{label: path}``; the first is the
    reference, the original at f16), with ratios to the reference and the weight-traffic bound
    ``params_reference / params_variant``."""
    import llama_cpp

    runs, noise = speed([str(p) for p in variants.values()], prompt_len, new_tokens, repeats, log)
    results = {"models": {}, "noisy": noise["noisy"], "noise": noise,
               "setup": {"runtime": "llama.cpp (llama-cpp-python " + llama_cpp.__version__ + ")",
                         "build": build_flags(), "threads": noise["threads"], "prompt_len": prompt_len,
                         "new_tokens": new_tokens, "repeats": repeats, "rounds": noise["rounds"]}}
    for label, path in variants.items():
        results["models"][label] = {
            "file": Path(path).name, "file_bytes": Path(path).stat().st_size, "params": gguf_params(path),
            "peak_memory_bytes": peak_memory(str(path), prompt_len, new_tokens), **rounded(runs[str(path)]),
            "rounds": runs[str(path)]}
    ref_label = next(iter(variants))
    ref, ref_runs = results["models"][ref_label], runs[str(variants[ref_label])]
    for label, row in results["models"].items():
        own = runs[str(variants[label])]
        row["bound"] = round(ref["params"] / row["params"], 3)
        row.update(ratio_columns("prefill_speedup", round_ratios(own["prefill_tok_s"], ref_runs["prefill_tok_s"])))
        row.update(ratio_columns("decode_speedup", round_ratios(own["decode_tok_s"], ref_runs["decode_tok_s"])))
        row["decode_vs_bound"] = round(row["decode_speedup"] / row["bound"], 3)
        row["size_ratio"] = round(row["file_bytes"] / ref["file_bytes"], 3)
    return results


def build_flags() -> str:
    """How the installed binding was built (``make setup``'s stamp), or its CPU features where there is none."""
    import llama_cpp

    from trimllm.gguf import tooling_dir

    stamp = tooling_dir().parent / "llama-cpp-build"
    if stamp.is_file():
        return stamp.read_text().strip()
    return "CPU features: " + ", ".join(build_features(llama_cpp.llama_print_system_info().decode()))


def table(results: dict) -> str:
    """Markdown table of :func:`compare`'s figures: medians with the range of the rounds, and the warning line
    above it when the timing was noisy."""
    head = ["variant", "params", "file MiB", "peak MiB", "prefill tok/s", "decode tok/s", "bound",
            "prefill speedup", "decode speedup", "decode / bound", "size ratio"]
    warning = warning_line(results.get("noise", {}))
    lines = ([warning, ""] if warning else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in results["models"].items():
        cells = [f"`{label}`", f"{r['params'] / 1e6:.1f}M", f"{r['file_bytes'] / 2**20:.0f}",
                 f"{r['peak_memory_bytes'] / 2**20:.0f}", with_range(r, "prefill_tok_s"), with_range(r, "decode_tok_s"),
                 f"{r['bound']}x", with_range(r, "prefill_speedup", 3, "x"), with_range(r, "decode_speedup", 3, "x"),
                 r["decode_vs_bound"], r["size_ratio"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
