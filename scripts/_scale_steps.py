"""The steps of scripts/bench_scale.py, each run in a process of its own (``python scripts/_scale_steps.py SPEC``,
SPEC a JSON object naming the step): its figures, with the process's own peak memory, on the last line of output.
The families' shapes are here too: the steps build their models from them."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from _common import ROOT

# The published config.json values of each family (attention/MLP shapes, vocabulary, context); rope scaling is left
# out: it changes no shape. Llama-3.2-1B, Qwen2.5-1.5B and Gemma-3-1B tie the embedding; the 8 B models do not.
FAMILIES = {
    "llama-3.2-1b": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 131072},
    "qwen2.5-1.5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 32768},
    "gemma-3-1b": {"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
                   "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
                   "sliding_window": 512, "query_pre_attn_scalar": 256, "max_position_embeddings": 32768},
    "llama-3.2-3b": {"model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 131072},
    "llama-3.1-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "tie_word_embeddings": False, "rope_theta": 500000.0, "max_position_embeddings": 131072},
    "qwen3-8b": {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                 "tie_word_embeddings": False, "rope_theta": 1000000.0, "max_position_embeddings": 40960},
    # the test's shape: the same machinery in seconds
    "tiny": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 49152, "tie_word_embeddings": True,
             "max_position_embeddings": 2048},
}
# Gemma's tokenizer has Gemma-3's 262144 entries; the others use SmolLM2's (49152 ids, all inside their vocabulary).
TOKENIZER = {"gemma3_text": "gemma3-270m"}
STEPS = ["score_bi", "score_exact", "drop_export", "validate", "train_lora", "train_lora_short", "train_qlora",
         "train_full", "train_distill", "gguf"]
N_TRAIN = 128  # training examples of the step runs (more than the steps use: no example repeats)
ADAM_BYTES = 16  # full fine-tuning in float32 with AdamW: weight, gradient and two moments per parameter


def child(spec: dict) -> None:
    import torch

    started = time.perf_counter()
    figures = globals()[f"step_{spec['step'].removesuffix('_short')}"](spec) or {}
    figures["seconds"] = round(time.perf_counter() - started, 1)
    figures["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if torch.cuda.is_available():
        figures["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(figures))


def step_build(spec: dict) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trimllm.modeling import load_model

    values = dict(FAMILIES[spec["family"]])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # bf16 on disk: half the space
    _, tokenizer = load_model(TOKENIZER.get(config.model_type, "smollm2-135m"))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(spec["out"])
    tokenizer.save_pretrained(spec["out"])
    return {"params": sum(p.numel() for p in model.parameters())}


def _load(spec: dict):
    from trimllm.modeling import load_model

    return load_model(spec["model"])


def _calibration(n: int = 16):
    from trimllm.scoring import CalibrationSet

    return CalibrationSet.from_dataset("sciq", n)


def step_score_bi(spec: dict) -> dict:
    from trimllm.scoring import run_scorer

    model, tokenizer = _load(spec)
    started = time.perf_counter()
    run_scorer("block_influence", model, tokenizer, _calibration(), batch_size=4, max_length=256)
    return {"step_seconds": round(time.perf_counter() - started, 1)}


def step_score_exact(spec: dict) -> dict:
    """The exact task-accuracy scan (TrimLLM) on the 4 candidates block influence ranks lowest."""
    from trimllm.scoring import run_scorer

    model, tokenizer = _load(spec)
    started = time.perf_counter()
    run_scorer("task_accuracy", model, tokenizer, _calibration(), batch_size=4, max_length=256,
               proxy="block_influence", proxy_k=4)
    return {"step_seconds": round(time.perf_counter() - started, 1)}


def _quarter(model) -> list[int]:
    n = model.config.num_hidden_layers
    return list(range(n - 1 - n // 4, n - 1))  # a quarter of the blocks, before the last one


def step_drop_export(spec: dict) -> dict:
    """Surgery, export (with its recorded check) and a reload in plain transformers in a fresh process."""
    from trimllm.export import save_compressed
    from trimllm.logits_check import transformers_check
    from trimllm.surgery import drop_blocks

    model, tokenizer = _load(spec)
    drop_blocks(model, _quarter(model))
    out = Path(spec["work"]) / "dropped"
    save_compressed(model, tokenizer, out)
    check = transformers_check(out)
    return {"reload_max_abs_logprob": round(check.max_diff, 6), "reload_ok": check.ok}


def step_validate(spec: dict) -> dict:
    from trimllm.data import train_side_splits
    from trimllm.multiple_choice import mc_accuracy
    from trimllm.prompts import mc_item

    model, tokenizer = _load(spec)
    items = [mc_item("sciq", r) for r in train_side_splits("sciq", 32, 0, 0, 1)["validation"]]
    started = time.perf_counter()
    mc_accuracy(model, tokenizer, items, 8, 256)
    return {"step_seconds": round(time.perf_counter() - started, 1), "items": len(items)}


def _train(spec: dict, *overrides: str) -> dict:
    """A few steps through ``trimllm train`` (schedule none: one stage at full depth unless overridden)."""
    from trimllm.api import train
    from trimllm.validation import load_recipe

    out = Path(spec["work"])
    base = [f"model.name={spec['model']}", "data.task=sciq", f"data.n_train={N_TRAIN}", "data.n_validation=8",
            "data.n_calibration=8", f"data.max_length={spec['max_length']}", "schedule=none", "eval.tasks=[]",
            f"train.batch_size={spec['batch_size']}", f"train.steps_per_stage={spec['train_steps']}", "train.save_steps=0",
            "train.logging_steps=1", f"train.group_by_length={str(spec.get('grouped', False)).lower()}",
            f"output_dir={out}"]
    train(load_recipe(ROOT / "recipes" / "smoke.yaml", [*base, *overrides]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {"tokens_per_s": last.get("tokens_per_s"), "train_peak_mb": last.get("peak_memory_mb"),
            "losses": [round(r["loss"], 5) for r in rows if "loss" in r],
            "tokens_real": last.get("tokens_real"), "train_seconds": last.get("train_runtime")}


def step_train_lora(spec: dict) -> dict:
    return _train(spec)


def step_train_qlora(spec: dict) -> dict:
    return _train(spec, "lora.method=qlora")


def step_train_full(spec: dict) -> dict:
    """Full fine-tuning, when its AdamW state fits this machine (else the computed need)."""
    import psutil

    need = spec["params"] * ADAM_BYTES / 2**30
    if need > 0.6 * psutil.virtual_memory().total / 2**30:
        return {"skipped": f"needs about {need:.1f} GB for weights, gradients and AdamW (computed)"}
    return _train(spec, "lora.method=full", "train.lr=1e-5")


def step_train_distill(spec: dict) -> dict:
    """A quarter removed at once, healed with distillation from the base model's cached top-16 logits."""
    return _train(spec, "schedule=oneshot", "stop.target_fraction=0.25", "distill.teacher=base", "distill.cache_k=16")


def step_gguf(spec: dict) -> dict:
    from trimllm.gguf import export_gguf

    out = Path(spec["work"]) / "model-f16.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    export_gguf(spec["model"], out, quant="f16")
    return {"gguf_gb": round(out.stat().st_size / 2**30, 2)}


def step_plain(spec: dict) -> dict:
    """The same LoRA steps as ``trimllm train`` (the same examples, order, adapter and optimizer) in a minimal
    ``Trainer`` + ``peft`` loop: right-padded batches, the causal-LM loss on logits at every position."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from trimllm.formats import training_data
    from trimllm.modeling import load_model, resolve_checkpoint
    from trimllm.validation import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml", ["data.task=sciq", f"data.n_train={N_TRAIN}",
                                                            "data.n_validation=8", "data.n_calibration=8",
                                                            f"data.max_length={spec['max_length']}"])
    _, tokenizer = load_model(spec["model"])
    examples = training_data(recipe.data, tokenizer).examples
    model = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(spec["model"]), dtype=torch.float32)
    lora = recipe.lora
    set_seed(recipe.train.seed)  # the adapters' initial weights, as trimllm draws them
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    real = [0]

    def collate(features):
        batch = pad([dict(f) for f in features])
        real[0] += int(batch["attention_mask"].sum())
        return batch

    cfg = recipe.train
    arguments = TrainingArguments(
        output_dir=spec["work"], max_steps=spec["train_steps"], per_device_train_batch_size=spec["batch_size"],
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, seed=cfg.seed,
        data_seed=cfg.seed, optim="adamw_torch", use_cpu=not torch.cuda.is_available(), save_strategy="no", report_to="none",
        logging_steps=1, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=examples, data_collator=collate)
    result = trainer.train()
    return {"tokens_per_s": round(real[0] / result.metrics["train_runtime"], 1), "tokens_real": real[0],
            "train_seconds": result.metrics["train_runtime"],
            "losses": [round(r["loss"], 5) for r in trainer.state.log_history if "loss" in r]}


if __name__ == "__main__":
    child(json.loads(sys.argv[1]))
