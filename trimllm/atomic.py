"""Atomic writes: a reader (or a resumed run) sees the old file or folder or the complete new one, never half of one.
Every file trimllm writes into a run or export folder goes through here."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

# A temporary sibling keeps at most this much of its target's name: a legal 245-character name plus ".tmp-PID-XXXX"
# would pass the 255-byte limit of a file name.
NAME_KEPT = 180
# Every temporary sibling trimllm writes (:func:`temp_prefix`, ``kind`` tmp or old), as other modules recognise it.
TEMP_NAME = re.compile(r"\..+\.(tmp|old)-.*")


def temp_prefix(path: Path, kind: str = "tmp") -> str:
    """``.NAME.tmp-PID-``: a temporary sibling's name, recognisably trimllm's and its owner's (see
    :func:`remove_stale_siblings`)."""
    return f".{Path(path).name[:NAME_KEPT]}.{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_siblings(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` that a trimllm process killed mid-write left (``.NAME.tmp-PID-…``
    whose PID no longer runs: SIGKILL leaves hundreds of MB of a half-written export); only ours, only dead ones."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name[:NAME_KEPT])}\.(tmp|old)-(\d+)(-.*)?")
    removed = []
    for sibling in path.parent.iterdir() if path.parent.is_dir() else []:
        match = pattern.fullmatch(sibling.name)
        if match and int(match.group(2)) != os.getpid() and not _alive(int(match.group(2))):
            shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() else sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


def die_with_parent() -> None:
    """``preexec_fn`` of a child process (llama.cpp's converter): the kernel kills it when trimllm dies (Linux's
    PR_SET_PDEATHSIG), instead of leaving it orphaned, writing into a folder nobody will rename."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:  # not Linux: the child may outlive its parent there
        pass


def atomic_directory(out_dir: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary sibling directory, then rename it to ``out_dir``.

    A crash leaves either the old ``out_dir`` or the complete new one, never a half-written directory.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir), dir=out_dir.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the folder it becomes gets the user's usual permissions
    try:
        write(tmp)
        if out_dir.exists():
            trash = out_dir.with_name(temp_prefix(out_dir, "old") + "0")
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
    tmp = path.with_name(temp_prefix(path) + "0")
    tmp.write_text(text)
    os.replace(tmp, path)
