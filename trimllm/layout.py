"""The names of a run folder's files, in one place: what ``trimllm train`` writes into ``output_dir``, what resume
reads back, what ``--overwrite`` recognizes as trimllm's own, and where a stage's Trainer and trackers write.

::

    output_dir/
      resolved.yaml        the recipe as it runs (the resume identity)
      run.json             the run file (trimllm.records)
      metrics.jsonl        a line per logged training step
      report.md, loss.png, accuracy.png
      stage_00/ ...        each stage's exported checkpoint
      final/               the chosen stage (final_eval/: its lm-eval results)
      tasks/               an own data set's lm-eval task
      tensorboard/stage_XX a tracker's logs (train.report_to)
      teacher_logits/KEY   the distillation teacher's cached top-k (distill.cache_k; trimllm.logit_cache)
      .trainer/stage_XX    the running stage's Trainer checkpoints (removed once it completes)
      .lock                held by the one process running in the folder
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESOLVED = "resolved.yaml"
RUN_FILE = "run.json"
METRICS = "metrics.jsonl"
REPORT = "report.md"
PLOTS = ("loss.png", "accuracy.png")
FINAL = "final"
FINAL_EVAL = "final_eval"
TASKS = "tasks"
TENSORBOARD = "tensorboard"
TEACHER_LOGITS = "teacher_logits"
TRAINER = ".trainer"
LOCK = ".lock"
STAGE_PATTERN = r"stage_\d+"  # a stage folder's name, as a regular expression
STAGE_GLOB = "stage_[0-9]*"


def stage_name(stage: int) -> str:
    """``stage_03``: the folder of stage 3's exported checkpoint (and of its Trainer and tracker logs)."""
    return f"stage_{stage:02d}"


@dataclass(frozen=True)
class RunDir:
    """A run folder's paths."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def resolved(self) -> Path:
        return self.root / RESOLVED

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def final_eval(self) -> Path:
        return self.root / FINAL_EVAL

    @property
    def tasks(self) -> Path:
        return self.root / TASKS

    @property
    def trainers(self) -> Path:
        return self.root / TRAINER

    def stage(self, stage: int) -> Path:
        return self.root / stage_name(stage)

    def trainer(self, stage: int) -> Path:
        """Where the Trainer of ``stage`` writes its checkpoints (removed once the stage is complete)."""
        return self.trainers / stage_name(stage)

    @property
    def teacher_logits(self) -> Path:
        return self.root / TEACHER_LOGITS

    def tensorboard(self, stage: int) -> Path:
        return self.root / TENSORBOARD / stage_name(stage)
