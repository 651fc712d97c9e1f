"""Rank awareness for ``torchrun`` / ``accelerate launch``: one process group, decisions made once, files and logs
written once.

Every rank trains (the Trainer wraps the model in DDP, or FSDP / DeepSpeed when the recipe asks), but anything
that decides the model's structure runs on rank 0 and is broadcast, so the ranks cannot drift apart through a
floating-point tie. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
logger = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group started by the launcher (gloo on CPU, NCCL on GPUs); a no-op for one process.

    The Trainer's accelerate state finds the group already initialized and reuses it.
    """
    if world_size() > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        logger.info("rank %d of %d joined the %s process group", rank(), world_size(), dist.get_backend())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` on rank 0 only and give every rank its result (pickled through the process group).

    An exception on rank 0 is raised on every rank, so no rank waits forever for a broadcast that never comes.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return fn(*args, **kwargs)
    box: list = [None]
    if is_main():
        try:
            box = [(True, fn(*args, **kwargs))]
        except Exception as err:  # noqa: BLE001  (re-raised below, on every rank)
            box = [(False, err)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value
