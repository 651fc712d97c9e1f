"""QLoRA on CUDA: the 4-bit base on the GPU, the full-precision copy on the host, adapters merged into it.
Runs wherever a GPU is present (CI has none; see BENCHMARKS.md for where it ran)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import save_tiny
from tests.integration.test_train import run_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_qlora_on_cuda_trains_and_exports_full_precision(tmp_path):
    tiny = save_tiny("llama", tmp_path / "tiny")
    plan = run_tiny(tiny, tmp_path / "q", "lora.method=qlora", "schedule.options.per_stage=1", "stop.target_fraction=0.34",
                    "lora.r=2", "train.lr=1e-2")
    assert [len(s["removed"]) for s in plan["stages"]] == [0, 1, 2]
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "q" / "final")
    assert final.config.num_hidden_layers == 4 and not hasattr(final.config, "quantization_config")
