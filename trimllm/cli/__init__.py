"""The ``trimllm`` command line. The only module that configures logging.

Each subcommand is a thin wrapper over one library function, so everything the CLI does is also a Python call. The
commands live in this package by kind (:mod:`.models`: info, drop, eval, score; :mod:`.recipes`: validate, train;
:mod:`.deploy`: export, bench); importing them registers them on :data:`trimllm.cli.common.app`.
"""

from __future__ import annotations

import logging
import os

import typer

from trimllm.cli.common import app

# Importing the command modules registers their commands, in this order: the order of `trimllm --help`.
from trimllm.cli import models  # noqa: F401  # isort: skip
from trimllm.cli import recipes  # noqa: F401  # isort: skip
from trimllm.cli import deploy  # noqa: F401  # isort: skip

__all__ = ["app", "main"]


def main() -> None:
    # Keep Hugging Face caches inside trimllm's cache unless the user chose otherwise (set before transformers loads).
    from trimllm.modeling import cache_root

    os.environ.setdefault("HF_HOME", str(cache_root() / "huggingface"))
    # Under torchrun only rank 0 logs progress; the other ranks report warnings and errors.
    from trimllm.distributed import is_main

    level = os.environ.get("TRIMLLM_LOG_LEVEL", "INFO") if is_main() else "WARNING"
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # bitsandbytes warns at import that an optional CPU kernel package is missing; its fallback works (QLoRA tests).
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from trimllm.errors import UserError  # imports nothing: no heavy import on the way out

    try:
        app()
    except UserError as err:  # a mistake in what was given: one message, no traceback
        if os.environ.get("TRIMLLM_DEBUG"):
            raise
        typer.echo(f"Error: {err}\n(set TRIMLLM_DEBUG=1 to see the traceback)", err=True)
        raise SystemExit(2) from None
    except OSError as err:
        from trimllm.outputs import disk_message

        message = disk_message(err)
        if message is None or os.environ.get("TRIMLLM_DEBUG"):
            raise
        typer.echo(f"Error: {message}", err=True)
        raise SystemExit(2) from None
