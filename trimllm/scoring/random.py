"""Random scores (seeded): the baseline every informed scorer must beat."""

from __future__ import annotations

import random

from trimllm.scoring import SCORERS


@SCORERS.register()
def random_scores(model, tokenizer, calibration, candidates, seed: int = 0):
    rng = random.Random(seed)
    return {c: rng.random() for c in candidates}, {"seed": seed}
