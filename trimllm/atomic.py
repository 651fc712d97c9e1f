"""Atomic writes: a reader (or a resumed run) sees the old file or folder or the complete new one, never half of one.
Every file trimllm writes into a run or export folder goes through here."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_directory(out_dir: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary sibling directory, then rename it to ``out_dir``.

    A crash leaves either the old ``out_dir`` or the complete new one, never a half-written directory.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the folder it becomes gets the user's usual permissions
    try:
        write(tmp)
        if out_dir.exists():
            trash = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file via a temporary sibling and an atomic rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
