"""The :class:`Plan`: what has been removed from a model, always in the base model's original layer indices.

A plan travels with the model (``model.trimllm_plan``), is written next to every exported checkpoint as
``plan.json``, and is enough to rebuild the compressed architecture from the base model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `import trimllm` and every command's start stay free of torch
    from torch import nn

PLAN_FILE = "plan.json"


@dataclass
class Plan:
    """Structural edits applied to a base model, in original block indices.

    Attributes:
        base_model: name or path of the model the indices refer to.
        model_type: ``config.model_type`` of the base model.
        num_layers: number of decoder blocks of the base model.
        params_original: parameter count of the base model (tied weights counted once).
        kept: original indices of the blocks still present, in order; ``kept[p]`` is the original index of
            the block now at position ``p``.
        dropped: blocks removed physically.
        bypassed_attention: blocks whose attention branch adds nothing (``h = x + MLP(norm(x))``).
        bypassed_mlp: blocks whose MLP branch adds nothing (``h = x + Attn(norm(x))``).
        frozen: blocks whose parameters are excluded from training.
    """

    base_model: str
    model_type: str
    num_layers: int
    params_original: int = 0
    kept: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    bypassed_attention: list[int] = field(default_factory=list)
    bypassed_mlp: list[int] = field(default_factory=list)
    frozen: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.kept:
            self.kept = [i for i in range(self.num_layers) if i not in self.dropped]

    @classmethod
    def for_model(cls, model: nn.Module) -> Plan:
        """A fresh, empty plan describing ``model`` as the base."""
        config = model.config
        return cls(
            base_model=str(getattr(config, "_name_or_path", "") or config.model_type),
            model_type=config.model_type,
            num_layers=config.num_hidden_layers,
            params_original=count_parameters(model),
        )

    def position(self, original_index: int) -> int:
        """Current position of the block that had ``original_index`` in the base model."""
        return self.kept.index(original_index)

    def modules(self) -> dict[str, list[str]]:
        """Removed / frozen modules as ``block.i`` / ``attn.i`` / ``mlp.i`` names (original indices)."""
        return {
            "dropped": [f"block.{i}" for i in self.dropped]
            + [f"attn.{i}" for i in self.bypassed_attention]
            + [f"mlp.{i}" for i in self.bypassed_mlp],
            "frozen": [f"block.{i}" for i in self.frozen],
        }

    @property
    def pruned(self) -> bool:
        """Has the model lost a block or a half (frozen blocks are still there)?"""
        return bool(self.dropped or self.bypassed_attention or self.bypassed_mlp)

    def is_empty(self) -> bool:
        return not (self.pruned or self.frozen)

    def to_dict(self) -> dict:
        return {**asdict(self), "blocks_kept": len(self.kept), "modules": self.modules()}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters; ``nn.Module.parameters`` already counts tied embeddings once."""
    return sum(p.numel() for p in model.parameters())
