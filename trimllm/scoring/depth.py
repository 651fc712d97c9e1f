"""Depth baseline (Lu et al., 2024, "Reassessing layer pruning in LLMs"): drop later blocks first. The score is
the share of the base model's depth that lies after the candidate's block, so earlier blocks score higher."""

from __future__ import annotations

from trimllm.scoring import SCORERS
from trimllm.scoring.candidates import parse
from trimllm.surgery import get_plan


@SCORERS.register()
def depth(model, tokenizer, calibration, candidates):
    layers = get_plan(model).num_layers
    return {c: (layers - parse(c)[1]) / layers for c in candidates}
