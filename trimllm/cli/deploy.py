"""The deployment commands: ``trimllm export`` (GGUF for llama.cpp) and ``trimllm bench`` (speed and memory in
transformers or in llama.cpp). Registered on :data:`trimllm.cli.common.app` by importing this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from trimllm.cli.common import RUNTIMES, DtypeOpt, app, check_output, check_sizes, load_for_cli


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="A trimllm run folder (its final/), a model folder (e.g. from `trimllm drop`) or a packaged name.")],
    gguf: Annotated[Path, typer.Option("--gguf", help="The .gguf file to write (for llama.cpp, Ollama, LM Studio).")],
    quant: Annotated[str, typer.Option(help="f16, q8_0 or q4_k_m (llama.cpp's quantizer).")] = "f16",
    overwrite: Annotated[bool, typer.Option(help="Replace --gguf if it is a GGUF trimllm wrote (never another file).")] = False,
) -> None:
    """Convert a model to GGUF with llama.cpp's own converter and quantizer."""
    from trimllm.gguf import export_gguf

    export_gguf(model, gguf, quant=quant, overwrite=overwrite)  # every refusal comes before any conversion work
    typer.echo(f"Saved {gguf} ({quant}, {gguf.stat().st_size / 2**20:.1f} MiB). Run it with llama.cpp, e.g. "
               f"`llama-cli -m {gguf}`, or `trimllm eval {gguf} --runtime llamacpp`.")


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(help="Models to compare; the first is the reference (the original).")],
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="Prompt tokens of the prefill and decode runs.")] = 512,
    batches: Annotated[str, typer.Option(help="Comma-separated prefill batch sizes (transformers).")] = "1,8",
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Greedy tokens decoded (batch 1, KV cache).")] = 128,
    repeats: Annotated[int, typer.Option(help="Timed rounds after a warm-up, alternating between the models; the median and range are reported. The default 3 keeps a comparison of two SmolLM2-sized models under 3 minutes on a quiet 2-core CPU; with more, it stops after 3 once every decode figure is within 5 %.")] = 3,
    out: Annotated[Path | None, typer.Option("--out", help="Write the figures to this JSON file.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: CUDA when available; transformers).")] = None,
    runtime: Annotated[str, typer.Option(help="transformers, or llamacpp: each model as GGUF in llama.cpp, at every --quants.")] = "transformers",
    quants: Annotated[str, typer.Option(help="llamacpp: comma-separated GGUF types of every model folder (a .gguf is run as it is).")] = "f16,q8_0,q4_k_m",
    dtype: DtypeOpt = "auto",
) -> None:
    """Prefill / decode speed, peak memory and parameters of trimmed models against the original, with each
    ratio next to the weight-traffic bound (params_original / params_trimmed)."""
    from trimllm.atomic import write_text_atomic

    try:
        sizes = tuple(int(b) for b in batches.split(",") if b)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated batch sizes such as 1,8; got {batches!r}", param_hint="--batches") from None
    check_sizes([("--prompt-len", prompt_len, 1), ("--new-tokens", new_tokens, 1), ("--repeats", repeats, 1),
                  ("--batches", min(sizes, default=0), 1)])
    if runtime not in RUNTIMES:
        raise typer.BadParameter(f"expected {' or '.join(RUNTIMES)}, got {runtime!r}", param_hint="--runtime")
    if out is not None and (out.suffix != ".json" or out.is_dir()):
        raise typer.BadParameter(f"--out is a JSON file path, got {out}", param_hint="--out")
    if out is not None:  # its folder must be writable (or creatable) before the timing runs
        check_output(out.parent, False, None, "--out", writable_only=True)
    log = lambda line: typer.echo(line, err=True)  # noqa: E731
    if runtime == "llamacpp":
        from trimllm.llamacpp import compare, table

        results = compare(_gguf_variants(models, quants), prompt_len, new_tokens, repeats, log)
    else:
        from trimllm.bench import compare, table

        # Load every model first: a bad spec gets one clear error before the (long) timing runs.
        loaded = {spec: load_for_cli(spec, dtype, device)[0] for spec in models}
        results = compare(models, dtype=dtype, device=device, prompt_len=prompt_len, batches=sizes,
                          new_tokens=new_tokens, repeats=repeats, log=log, models=loaded)
    typer.echo(table(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(results, indent=2) + "\n")
        typer.echo(f"\nSaved to {out}")


def _gguf_variants(models: list[str], quants: str) -> dict[str, Path]:
    """``{label: GGUF}`` for the llama.cpp bench: a .gguf as given, every other model converted at each of
    ``quants`` (once; cached)."""
    from trimllm.gguf import QUANTS, cached_gguf, check_tooling, model_folder

    types = [q for q in quants.split(",") if q]
    unknown = [q for q in types if q not in QUANTS]
    if unknown or not types:
        raise typer.BadParameter(f"expected GGUF types among {', '.join(QUANTS)}, got {quants!r}", param_hint="--quants")
    check_tooling()
    folders = {spec: None if spec.endswith(".gguf") else model_folder(spec) for spec in models}
    missing = [spec for spec, folder in folders.items() if folder is None and not Path(spec).is_file()]
    if missing:  # every spec is checked before the first (minutes-long) conversion
        raise typer.BadParameter(f"GGUF file {missing[0]} does not exist", param_hint="MODELS")
    variants = {}
    for spec, folder in folders.items():
        if folder is None:
            variants[Path(spec).name] = Path(spec)
            continue
        for quant in types:
            variants[f"{Path(spec).name} {quant}"] = cached_gguf(folder, quant)
    return variants
