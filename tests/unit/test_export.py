"""Standard export: plain transformers reloads compressed models with identical logits; writes are atomic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import ARCHS, build_tiny, tiny_tokenizer
from trimllm.architectures import get_layers
from trimllm.export import save_compressed
from trimllm.modeling import load_model
from trimllm.surgery import SkippedAttention, SkippedMLP, bypass_attention, bypass_mlp, drop_blocks, get_plan


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("model_type", ARCHS)
def test_dropped_model_reloads_with_plain_transformers(model_type, tmp_path, input_ids):
    model = build_tiny(model_type)
    drop_blocks(model, [1, 2])
    save_compressed(model, tiny_tokenizer(), tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.num_hidden_layers == 4 == len(get_layers(reloaded))
    assert getattr(reloaded.config, "layer_types", None) == getattr(model.config, "layer_types", None)
    assert torch.equal(logits(reloaded, input_ids), logits(model, input_ids))
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["kept"] == [0, 3, 4, 5] and plan["dropped"] == [1, 2]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_reload_in_a_separate_plain_process(model_type, tmp_path, input_ids):
    model = build_tiny(model_type)
    drop_blocks(model, [2])  # a full-attention block in the tiny Gemma-3
    save_compressed(model, None, tmp_path / "out")
    torch.save(input_ids, tmp_path / "ids.pt")
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM;"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval();"
        "ids = torch.load(sys.argv[2]);"
        "torch.save(m(input_ids=ids, use_cache=False).logits.detach(), sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", script, tmp_path / "out", tmp_path / "ids.pt", tmp_path / "l.pt"], check=True)
    assert torch.equal(torch.load(tmp_path / "l.pt"), logits(model, input_ids))


@pytest.mark.parametrize("model_type", ARCHS)
def test_bypass_export_plain_and_fast_paths_agree(model_type, tmp_path, input_ids):
    model = build_tiny(model_type)
    bypass_attention(model, [0, 3])
    bypass_mlp(model, [4])
    drop_blocks(model, [5])
    expected = logits(model, input_ids)
    save_compressed(model, tiny_tokenizer(), tmp_path / "out")
    # Plain transformers: standard modules with zero weights, computed and adding exactly zero.
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert not any(isinstance(m, (SkippedAttention, SkippedMLP)) for m in plain.modules())
    assert torch.count_nonzero(get_layers(plain)[3].self_attn.o_proj.weight) == 0
    torch.testing.assert_close(logits(plain, input_ids), expected, rtol=0, atol=1e-6)
    # trimllm: the plan is re-applied and the branches really skipped.
    fast, tokenizer = load_model(tmp_path / "out", device="cpu")
    layers = get_layers(fast)
    assert isinstance(layers[0].self_attn, SkippedAttention) and isinstance(layers[4].mlp, SkippedMLP)
    assert isinstance(layers[3].self_attn, SkippedAttention)
    assert torch.equal(logits(fast, input_ids), expected)
    assert get_plan(fast).kept == [0, 1, 2, 3, 4] and get_plan(fast).dropped == [5]
    assert tokenizer.pad_token == "<pad>"


def test_export_leaves_the_in_memory_model_fast(tmp_path):
    model = build_tiny("llama")
    bypass_attention(model, [1])
    save_compressed(model, None, tmp_path / "out")
    assert isinstance(get_layers(model)[1].self_attn, SkippedAttention)


def test_refuses_to_overwrite_a_non_empty_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    model = build_tiny("llama")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_compressed(model, None, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    save_compressed(model, None, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "config.json").exists()


def test_failed_export_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = build_tiny("llama")

    def crash(*args, **kwargs):
        (args[0] / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_compressed(model, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_model_card_describes_the_edit(tmp_path):
    model = build_tiny("qwen3")
    drop_blocks(model, [0, 5])
    bypass_mlp(model, [2])
    save_compressed(model, None, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "block.0, block.5, mlp.2" in card
    assert "4 blocks" in card and "6 blocks" in card
    assert "from_pretrained" in card


def test_model_card_front_matter_recipe_and_no_machine_paths(tmp_path):
    import yaml

    from tests.conftest import build_tiny
    from trimllm.config import Recipe
    from trimllm.export import add_results_to_card, model_card
    from trimllm.surgery import drop_blocks, get_plan

    model = build_tiny("llama")
    get_plan(model).base_model = "smollm2-135m"  # as load_model names a packaged model
    drop_blocks(model, [1])
    recipe = Recipe().to_dict()
    recipe["output_dir"] = str(tmp_path / "runs" / "science")
    recipe["model"]["name"] = str(tmp_path / "models" / "teacher")
    card = model_card(model, get_plan(model), "", recipe)
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["license"] == "apache-2.0"
    assert front["pipeline_tag"] == "text-generation" and front["datasets"] == ["sciq"]
    assert {"trimllm", "layer-pruning", "sciq"} <= set(front["tags"])
    shown = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert shown["train"] == recipe["train"] and shown["output_dir"] == "science"
    assert shown["model"]["name"] == "teacher" and str(tmp_path) not in card
    (tmp_path / "README.md").write_text(card)
    add_results_to_card(tmp_path, "| task | acc |\n|---|---|\n| sciq | 0.5 |")
    add_results_to_card(tmp_path, "| task | acc |\n|---|---|\n| sciq | 0.7 |")  # replaced, not appended
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and "| sciq | 0.7 |" in text and "0.5 |" not in text
    assert "## Recipe" in text and text.endswith("| sciq | 0.7 |\n")  # the recipe kept, the table last
