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

from trimllm import layout as run_layout
from trimllm.atomic import TEMP_NAME
from trimllm.errors import OutputError  # noqa: F401  (raised here; re-exported)
from trimllm.plan import PLAN_FILE

# What each kind of output folder holds, recursively: for each name at its top level, "file" (a file trimllm writes),
# another kind (a subfolder of that kind, checked the same way) or "any" (trimllm's own working folders: the
# Trainer's checkpoints, TensorBoard event files, a killed write's temporary sibling). The first name is the marker.
_TMP = TEMP_NAME.pattern
_RUN = {run_layout.RESOLVED: "file", run_layout.RUN_FILE: "file", PLAN_FILE: "file", run_layout.METRICS: "file",
        run_layout.REPORT: "file", **{plot: "file" for plot in run_layout.PLOTS}, run_layout.FINAL: "a trimllm export",
        run_layout.STAGE_PATTERN: "a trimllm export", run_layout.FINAL_EVAL: "trimllm results", run_layout.TASKS: "trimllm tasks",
        run_layout.TRAINER: "any", run_layout.TENSORBOARD: "any", run_layout.TEACHER_LOGITS: "any", _TMP: "any", run_layout.LOCK: "file"}
_EXPORT = {name: "file" for name in (
    PLAN_FILE, "config.json", "trimllm_check.safetensors", "README.md", "model.safetensors", "model.safetensors.index.json",
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
    "results.json", "results.md",  # `trimllm eval --out` into a model folder adds its results
    r"model-\d+-of-\d+\.safetensors", r"samples_.+\.jsonl")} | {_TMP: "any"}
_SCORES = {"scores.json": "file", "scores.md": "file", "scores.png": "file", _TMP: "any"}
_EVAL = {"results.json": "file", "results.md": "file", r"samples_.+\.jsonl": "file", _TMP: "any"}
_TASKS = {r".+\.yaml": "file", r".+_test\.jsonl": "file", _TMP: "any"}  # a user data set's task (formats.write_task)
# trimllm compress (trimllm.compression): its runs, its final model and the GGUF files of its deployment proof
_DEPLOY = {"proof.json": "file", r".+\.gguf": "file", _TMP: "any"}
_COMPRESS = {"compress.json": "file", "compress.md": "file", "compress.png": "file", run_layout.LOCK: "file",
             r"(reference|probe_\d+|heal_\d+)": "a trimllm run", run_layout.FINAL: "a trimllm export",
             "deploy": "trimllm deploy files", run_layout.TEACHER_LOGITS: "any", _TMP: "any"}
KINDS = {"a trimllm run": _RUN, "a trimllm export": _EXPORT, "trimllm scores": _SCORES, "trimllm results": _EVAL,
         "a trimllm compress run": _COMPRESS}
_LAYOUTS = {**KINDS, "trimllm tasks": _TASKS, "trimllm deploy files": _DEPLOY}


def _rule(kind: str, name: str) -> str | None:
    return next((rule for pattern, rule in _LAYOUTS[kind].items() if re.fullmatch(pattern, name)), None)


def foreign_paths(folder: Path, kind: str) -> list[str]:
    """The paths under ``folder`` (relative to it) that an output of ``kind`` does not hold: a file where trimllm
    writes none, a folder in place of a file, anything inside a subfolder that is not of that subfolder's kind."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        rule = _rule(kind, path.name)
        if rule is None or (rule == "file" and path.is_dir()):
            found.append(path.name + ("/" if path.is_dir() else ""))
        elif rule in _LAYOUTS:
            found += [f"{path.name}/{inner}" for inner in foreign_paths(path, rule)] if path.is_dir() else [path.name]
    return found


def kind_of(folder: Path) -> str | None:
    """Which trimllm output ``folder`` is ("a trimllm run", ...), or None: it must hold the kind's marker and, at
    every depth, nothing but what that kind holds."""
    names = {p.name for p in folder.iterdir()}
    for kind, layout in KINDS.items():
        if next(iter(layout)) in names and not foreign_paths(folder, kind):
            return kind
    return None


def _closest_foreign(folder: Path) -> list[str]:
    """The foreign paths of ``folder`` against the kind whose marker it holds (else every top-level name that no
    kind holds)."""
    names = {p.name for p in folder.iterdir()}
    marked = [kind for kind, layout in KINDS.items() if next(iter(layout)) in names]
    if marked:
        return min((foreign_paths(folder, kind) for kind in marked), key=len)
    return sorted(n for n in names if not any(_rule(kind, n) for kind in KINDS))


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
        foreign = _closest_foreign(folder)
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        why = f"it holds files trimllm did not write ({shown})"
    if why:
        raise OutputError(f"{flag} would delete {folder}, but {why}: nothing was deleted. Choose a new or empty "
                          "folder for the output.")


def check_writable(path: Path) -> None:
    """Refuse (OutputError) an output path that cannot be created or written, before any work is done."""
    path = Path(path)
    if path.is_symlink():  # replacing it would replace the link, or what it points to: neither is what was asked
        raise OutputError(f"{path} is a symbolic link (to {os.readlink(path)}); give the real folder, or a new path")
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


def disk_message(err: OSError) -> str | None:
    """One line for the disk errors a user can act on (a full disk, a name too long), else None."""
    import errno

    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return (f"no space left on the disk{where}: free some space (or choose an output on another disk) and rerun; "
                "a run resumes from its last completed stage")
    if err.errno == errno.ENAMETOOLONG:
        return f"a file name is too long for this file system{where}: choose a shorter output name"
    return None
