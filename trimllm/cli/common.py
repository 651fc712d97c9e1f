"""What the commands share: the Typer ``app`` they register on, the argument types, and the checks that turn bad
options into one-line errors before any heavy work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def scorer_names() -> list[str]:
    """The registered scorers (the files of trimllm/scoring), for the help text."""
    from trimllm.scoring import SCORERS

    return SCORERS.names()


def plugin_help() -> str:
    """The registered plug-ins a recipe can name, for `train --help`."""
    from trimllm.freezing import FREEZING
    from trimllm.methods import METHODS
    from trimllm.schedules import SCHEDULES

    return (f"Schedules (schedule.name): {', '.join(SCHEDULES.names())}. Scorers (scoring.scorer): "
            f"{', '.join(scorer_names())}. Training methods (lora.method): {', '.join(METHODS.names())}. "
            f"Freezing (freeze.mode): {', '.join(FREEZING.names())}.")


app = typer.Typer(
    help="Specialize decoder LLMs to a domain while removing the blocks it does not need.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ModelArg = Annotated[
    str, typer.Argument(help="Packaged name (smollm2-135m, gemma3-270m), local checkpoint dir, .gguf file or hub id.")
]
RUNTIMES = ("transformers", "llamacpp")  # what runs the model: transformers, or a GGUF in llama.cpp
DtypeOpt = Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16.")]


def parse_indices(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated block indices such as 3,13,14; got {text!r}", param_hint=flag) from None


def check_sizes(sizes: list[tuple[str, int | None, int]]) -> None:
    """Every (flag, value, minimum) at once; None = not given."""
    problems = [f"{flag} must be >= {low}, got {value}" for flag, value, low in sizes if value is not None and value < low]
    if problems:
        raise typer.BadParameter("; ".join(problems), param_hint="options")


def check_output(out: Path, overwrite: bool, own, flag: str, writable_only: bool = False) -> None:
    from trimllm import outputs
    from trimllm.errors import OutputError

    try:
        outputs.check_writable(out) if writable_only else outputs.check_output(out, overwrite, own)
    except OutputError as err:
        raise typer.BadParameter(str(err), param_hint=flag) from None


def load_for_cli(spec: str, dtype: str, device: str | None = None):
    """``load_model`` with its errors turned into a one-line CLI error."""
    from trimllm.architectures import UnsupportedArchitectureError, get_arch
    from trimllm.modeling import ModelLoadError, load_model

    try:
        model, tokenizer = load_model(spec, dtype=dtype, device=device)
        get_arch(model)
    except (ModelLoadError, UnsupportedArchitectureError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="MODEL") from None
    return model, tokenizer
