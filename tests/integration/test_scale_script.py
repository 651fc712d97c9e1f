"""scripts/bench_scale.py at a tiny shape (so the script cannot rot): every pipeline step runs in its own process
and reports its figures; the plain Trainer + peft loop trains exactly the steps trimllm's stage trainer does; and
``train.gradient_checkpointing`` (on by default from 1 B parameters) changes the memory, not the training."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT, save_tiny
from tests.integration.test_train import run_tiny
from trimllm.methods import CHECKPOINTING_PARAMS, checkpointing
from trimllm.training import training_arguments
from trimllm.validation import load_recipe

pytestmark = pytest.mark.integration
SCRIPT = ROOT / "scripts" / "bench_scale.py"
scale = runpy.run_path(str(SCRIPT))


def bench(tmp_path, *args) -> dict:
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out), "--markdown", str(tmp_path / "B.md"),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_step_runs_at_a_tiny_shape_in_its_own_process(tmp_path):
    figures = bench(tmp_path, "--families", "tiny")["families"]["tiny"]
    steps = figures["steps"]
    assert list(steps) == scale["STEPS"]
    assert not [f"{name}: {r['error']}" for name, r in steps.items() if "error" in r]
    assert all(r["peak_rss_gb"] > 0.1 and r["seconds"] > 0 for r in steps.values())
    trained = [name for name in steps if name.startswith("train_")]
    assert all(steps[name]["tokens_per_s"] > 0 and len(steps[name]["losses"]) >= 2 for name in trained)
    assert steps["drop_export"]["reload_ok"] and steps["drop_export"]["reload_max_abs_logprob"] < 1e-3
    assert steps["gguf"]["gguf_gb"] > 0
    assert figures["params"] == sum(p.numel() for p in _tiny_model().parameters())
    assert figures["context"]["computed"] and not (tmp_path / "work" / "tiny").exists()  # the models it built: gone
    text = (tmp_path / "B.md").read_text()
    assert "## Scale" in text and all(f"| {name} |" in text for name in steps)


def _tiny_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(scale["FAMILIES"]["tiny"])
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values))


def test_the_plain_loop_trains_exactly_the_steps_trimllm_trains(tmp_path):
    model = save_tiny("llama", tmp_path / "tiny")
    plain = bench(tmp_path, "--part", "plain", "--model", str(model), "--rounds", "1", "--train-steps", "3")["plain"]
    # the same examples in the same order, the same adapters and optimizer: the same loss at every step
    assert plain["losses"]["trimllm"] == pytest.approx(plain["losses"]["plain"], rel=1e-4)
    assert len(plain["losses"]["plain"]) == 3
    assert plain["ratio"] == pytest.approx(plain["median"]["trimllm"] / plain["median"]["plain"], rel=1e-2)


def test_context_memory_is_linear_in_tokens_from_the_two_lengths():
    args = SimpleNamespace(batch_size=2, max_length=128)
    steps = {"train_lora": {"peak_rss_gb": 10.0}, "train_lora_short": {"peak_rss_gb": 9.0}}  # 1 GB per 128 tokens
    figures = scale["context_memory"]("llama-3.2-1b", steps, args)
    assert figures["per_token_mb"] == pytest.approx(1024 / 128)
    assert figures["lora_step_gb"] == {4096: pytest.approx(10.0 + (4096 - 256) / 128, abs=0.05),
                                       32768: pytest.approx(10.0 + (32768 - 256) / 128, abs=0.05)}


class Sized(torch.nn.Linear):
    def __init__(self, n: int):
        super().__init__(1, 1)
        self.n = n

    def num_parameters(self) -> int:
        return self.n


def test_checkpointing_is_on_by_default_from_a_billion_parameters(tmp_path):
    big, small = Sized(int(CHECKPOINTING_PARAMS)), Sized(int(CHECKPOINTING_PARAMS) - 1)
    assert checkpointing("auto", big) and not checkpointing("auto", small) and not checkpointing("auto", None)
    assert checkpointing(True, small) and not checkpointing(False, big)
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml", [])
    assert recipe.train.gradient_checkpointing == "auto"
    assert training_arguments(recipe, tmp_path, 0, model=big).activation_checkpointing
    assert not training_arguments(recipe, tmp_path, 0, model=small).activation_checkpointing


def test_checkpointing_changes_memory_not_the_training(tmp_path):
    """Recomputing activations must give the LoRA adapters the same gradients (a checkpointed block whose inputs do
    not require grad would silently train nothing)."""
    tiny = save_tiny("llama", tmp_path / "tiny")
    losses = {}
    for on in ("true", "false"):
        run_tiny(tiny, tmp_path / on, "schedule=none", f"train.gradient_checkpointing={on}", "train.lr=1e-2")
        rows = [json.loads(line) for line in (tmp_path / on / "metrics.jsonl").read_text().splitlines()]
        losses[on] = [r["loss"] for r in rows if "loss" in r]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
    assert losses["true"][-1] < losses["true"][0]  # it trained
