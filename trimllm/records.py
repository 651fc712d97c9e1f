"""The run file (``output_dir/run.json``): what a training run decided and measured, as typed records.

One stage's life has two typed forms. A :class:`StagePlan` is the decision, made before training: what the
schedule removes, what is frozen, the scores behind it. It is written as the run file's ``running`` entry before the
stage trains, so a killed run rebuilds that very structure and resumes. A :class:`StageRecord` is the completed stage:
the plan plus what training and validation measured. :class:`FinalChoice` names the stage exported as ``final/``.
:class:`RunFile` serialises all of them, in one place, to and from JSON.

The run file is not a checkpoint's ``plan.json`` (:class:`trimllm.plan.Plan`, the structural edits of one model).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from trimllm.atomic import write_text_atomic
from trimllm.layout import FINAL, RUN_FILE


@dataclass(frozen=True)
class StagePlan:
    """A stage's decision, before training (original block indices)."""

    stage: int
    dropped: list[str]  # candidates removed now: block.i / attn.i / mlp.i
    last: bool  # the schedule ends after this stage
    scorer: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    frozen: list[int] = field(default_factory=list)  # blocks trained frozen this stage
    scoring_s: float = 0.0  # seconds spent deciding (scoring and choosing what to freeze)


@dataclass(frozen=True)
class StageRecord:
    """A completed stage, as the run file, report.md and the study read it."""

    stage: int
    scorer: str | None
    scores: dict[str, float]
    dropped: list[str]
    removed: list[str]  # everything removed so far
    frozen: list[str]  # block.i
    blocks_kept: int
    params: int
    val_acc: float
    seconds: dict[str, float]  # scoring, training, evaluation
    tokens: dict[str, int]  # real, padded: training tokens, and the positions computed with padding
    peak_memory_mb: float
    dir: str  # the stage's checkpoint folder, relative to the run folder
    last: bool  # no stage follows (the schedule's decision, a stop rule, or the accuracy floor)
    steps: int | None = None  # optimizer steps it trained (None: a run file written before stages recorded them)


@dataclass(frozen=True)
class FinalChoice:
    """The stage copied to ``final/`` and why (the accuracy floor, relative to stage 0's validation accuracy)."""

    stage: int
    source: str  # the stage folder it was copied from (``"from"`` in the run file)
    val_acc: float
    floor: float | None
    reference_val_acc: float
    dir: str = FINAL

    def to_dict(self) -> dict:
        return {"stage": self.stage, "dir": self.dir, "from": self.source, "val_acc": self.val_acc,
                "floor": self.floor, "reference_val_acc": self.reference_val_acc}

    @classmethod
    def from_dict(cls, data: dict) -> FinalChoice:
        return cls(data["stage"], data["from"], data["val_acc"], data["floor"], data["reference_val_acc"],
                   data.get("dir", FINAL))


@dataclass
class RunFile:
    """Everything ``run.json`` holds: the recipe, the base model's size, the completed stages, the running
    stage's decision (for resume) and the final choice (set last: a run file with one is a finished run)."""

    recipe: dict
    base_model: str | None = None
    num_layers: int = 0
    params_original: int = 0
    stages: list[StageRecord] = field(default_factory=list)
    running: StagePlan | None = None
    final: FinalChoice | None = None
    data: dict[str, str] | None = None  # fingerprint of the records each part used (trimllm.rundir.data_fingerprint)

    def to_dict(self) -> dict:
        """The run's result, as :func:`trimllm.pipeline.run` returns it (no ``running`` entry)."""
        return {"recipe": self.recipe, "base_model": self.base_model, "num_layers": self.num_layers,
                "params_original": self.params_original, "stages": [dataclasses.asdict(s) for s in self.stages],
                "final": self.final.to_dict() if self.final else None}

    def write(self, out: Path) -> None:
        data = {**self.to_dict(), "running": dataclasses.asdict(self.running) if self.running else None,
                "data": self.data}
        write_text_atomic(Path(out) / RUN_FILE, json.dumps(data, indent=2) + "\n")

    @classmethod
    def read(cls, out: Path) -> RunFile:
        data = json.loads((Path(out) / RUN_FILE).read_text())
        return cls(data["recipe"], data["base_model"], data["num_layers"], data["params_original"],
                   [StageRecord(**s) for s in data["stages"]],
                   StagePlan(**data["running"]) if data.get("running") else None,
                   FinalChoice.from_dict(data["final"]) if data.get("final") else None, data.get("data"))
