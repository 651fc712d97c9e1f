"""`trimllm train` that SIGKILLs itself right after the Trainer checkpoint of STAGE:STEP is written, like a job
killed by the scheduler. Usage: python -m tests.helpers.killed_train STAGE:STEP RECIPE [key=value ...]"""

import os
import signal
import sys

from transformers import TrainerCallback

from trimllm import training
from trimllm.cli import main

stage_at, step_at = (int(x) for x in sys.argv[1].split(":"))
_callbacks = training.callbacks


class KillAfterSave(TrainerCallback):
    def __init__(self, stage: int):
        self.stage = stage

    def on_save(self, args, state, control, **kwargs):
        if self.stage == stage_at and state.global_step == step_at:
            os.kill(os.getpid(), signal.SIGKILL)


def callbacks(metrics_path, stage):
    return [*_callbacks(metrics_path, stage), KillAfterSave(stage)]


training.callbacks = callbacks
sys.argv = ["trimllm", "train", *sys.argv[2:]]
main()
