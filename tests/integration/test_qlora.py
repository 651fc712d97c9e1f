"""QLoRA on CPU (bitsandbytes' CPU backend): adapters train on a 4-bit NF4 copy and are merged into the
full-precision weights, never into the 4-bit ones."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import ROOT, save_tiny
from tests.integration.test_train import run_tiny
from trimllm.training import training_arguments
from trimllm.validation import load_recipe

pytestmark = pytest.mark.integration

bitsandbytes = pytest.importorskip("bitsandbytes")  # a declared dependency; installed by make setup


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def test_qlora_merges_a_low_rank_update_into_full_precision_weights(tiny_dir, tmp_path):
    plan = run_tiny(tiny_dir, tmp_path / "q", "lora.method=qlora", "schedule=none", "lora.r=2", "train.lr=1e-2")
    config = json.loads((tmp_path / "q" / "final" / "config.json").read_text())
    assert "quantization_config" not in config
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "q" / "final")
    assert final.dtype == torch.float32
    changed = 0
    for (name, before), after in zip(base.named_parameters(), final.parameters(), strict=True):
        delta = (after - before).detach()
        if name.endswith("proj.weight") and delta.abs().max() > 0:
            changed += 1
            # base + B @ A: rank <= r. Merging into dequantized 4-bit weights would add full-rank rounding error.
            singular = torch.linalg.svdvals(delta)
            assert (singular[2:] < 1e-5 * singular[0]).all(), (name, singular[:4])
        elif not name.endswith("proj.weight"):
            assert torch.equal(before, after), name  # norms and embeddings are not trained
    assert changed == 7 * 6  # q, k, v, o, gate, up, down in every block
    # the accuracy the run recorded is the exported model's, on the run's validation items
    from transformers import AutoTokenizer

    from trimllm.data import train_side_splits
    from trimllm.multiple_choice import mc_accuracy
    from trimllm.prompts import mc_item

    validation = [mc_item("sciq", r) for r in train_side_splits("sciq", 8, 4, 0, 16)["validation"]]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "q" / "final")
    assert plan["stages"][0]["val_acc"] == pytest.approx(mc_accuracy(final, tokenizer, validation, 8, 96), abs=1e-9)


def test_qlora_uses_paged_8bit_adamw_by_default(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml", ["lora.method=qlora"])
    assert training_arguments(recipe, tmp_path, 0).optim == "paged_adamw_8bit"
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml", [])
    assert training_arguments(recipe, tmp_path, 0).optim == "adamw_torch"
