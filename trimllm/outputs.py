"""What trimllm may write to and delete: every output folder is checked here before any work starts.

The rule behind ``--overwrite``: trimllm only ever replaces a folder that it wrote itself — a run folder
(``trimllm train``), a model export (``trimllm drop``, a run's ``stage_XX`` / ``final``), a scores folder
(``trimllm score``) or an evaluation folder (``trimllm eval --out``) — or an empty one. A folder holding anything
else, the current directory, one of its parents or the home directory is never deleted, whatever the option says.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from trimllm.plan import PLAN_FILE

# The top-level names each kind of output folder holds; the first name of each is its marker.
_RUN = ("resolved.yaml", "run.json", PLAN_FILE, "metrics.jsonl", "report.md", "loss.png", "accuracy.png", ".trainer",
        "final", "final_eval", "tensorboard")
_EXPORT = (PLAN_FILE, "config.json", "README.md", "model.safetensors", "model.safetensors.index.json",
           "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
           "results.json", "results.md")  # `trimllm eval --out` into a model folder adds its results
_SCORES = ("scores.json", "scores.md", "scores.png")
_EVAL = ("results.json", "results.md")
KINDS = {"a trimllm run": _RUN, "a trimllm export": _EXPORT, "trimllm scores": _SCORES, "trimllm results": _EVAL}
_OURS_TOO = re.compile(r"^(stage_\d+|model-\d+-of-\d+\.safetensors|samples_.+\.jsonl|\..+\.(tmp|old)-.*)$")


class OutputError(ValueError):
    """An output folder that cannot be used (or replaced) as asked; the message says what is there."""


def kind_of(folder: Path) -> str | None:
    """Which trimllm output ``folder`` is ("a trimllm run", ...), or None: it must hold the kind's marker and
    nothing but files of that kind."""
    names = {p.name for p in folder.iterdir()}
    for kind, own in KINDS.items():
        if own[0] in names and all(n in own or _OURS_TOO.match(n) for n in names):
            return kind
    return None


def _protected(folder: Path) -> str | None:
    """Why ``folder`` may never be deleted, or None."""
    folder = folder.resolve()
    cwd = Path.cwd().resolve()
    if folder == cwd or folder in cwd.parents:
        return "it is the current directory" if folder == cwd else "it contains the current directory"
    if folder == Path.home().resolve() or folder in Path.home().resolve().parents:
        return "it is the home directory or one of its parents"
    if (folder / ".git").exists():
        return "it is a git checkout"
    return None


def check_replaceable(folder: Path, flag: str = "--overwrite") -> None:
    """Refuse (OutputError) to replace ``folder`` unless it is empty or a trimllm output, and not protected."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; choose another output folder")
    why = _protected(folder)
    if why is None and any(folder.iterdir()) and kind_of(folder) is None:
        foreign = sorted(p.name for p in folder.iterdir() if not any(p.name in own for own in KINDS.values()))
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        why = f"it holds files trimllm did not write ({shown})"
    if why:
        raise OutputError(f"{flag} would delete {folder}, but {why}: nothing was deleted. Choose a new or empty "
                          "folder for the output.")


def check_writable(path: Path) -> None:
    """Refuse (OutputError) an output path that cannot be created or written, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file; the output is a folder: choose another path")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{path} cannot be written: no write permission in {existing}")


def check_output(folder: Path, overwrite: bool, own: str | tuple[str, ...] | None = None) -> None:
    """The check of a command's output folder: writable; if not empty, it must be of a kind in ``own`` (the
    command's own kinds of output, written into file by file) or, with ``overwrite``, replaceable."""
    check_writable(folder)
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    kinds = (own,) if isinstance(own, str) else own or ()
    if overwrite:
        check_replaceable(folder)
    elif kind_of(folder) not in kinds:
        hint = "" if kinds else ", or pass --overwrite if it holds an earlier trimllm output"
        raise OutputError(f"{folder} is not empty and does not hold {' or '.join(kinds) or 'a trimllm output'}; "
                          f"choose another folder{hint}")
