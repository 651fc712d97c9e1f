"""One stage of training on a transformers ``Trainer``: LoRA via peft (merged at the end of the stage, so the
next surgery acts on plain weights) or full fine-tuning. A fresh Trainer, optimizer and scheduler per stage,
because the model's structure changed since the last one.

Supervised fine-tuning follows TrimLLM's setup: the prompt is the task's evaluation prompt, the target is the
gold answer, and the loss is on the answer tokens only.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from trimllm.architectures import get_layers
from trimllm.config import Recipe
from trimllm.prompts import MCItem
from trimllm.scoring.calibration import build_mc_batches, encode_item
from trimllm.scoring.forward import choice_loglik, decoder, mc_inputs, mc_outcome
from trimllm.surgery import freeze_blocks, get_plan

logger = logging.getLogger(__name__)


def sft_examples(tokenizer, items: list[MCItem], max_length: int) -> list[dict]:
    """``input_ids`` = prompt + gold answer; ``labels`` = -100 on the prompt, the answer tokens otherwise."""
    examples = []
    for item in items:
        context, continuations = encode_item(tokenizer, item, max_length)
        answer = continuations[item.gold]
        examples.append({"input_ids": context + answer, "labels": [-100] * len(context) + answer})
    return examples


class SFTCollator:
    """Right-pads a list of examples into tensors (labels padded with -100)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def mc_accuracy(model: nn.Module, tokenizer, items: list[MCItem], batch_size: int = 8, max_length: int = 512) -> float:
    """Multiple-choice accuracy with lm-eval's rule (highest summed log-likelihood), on packed rows."""
    model.eval()
    correct = 0
    for batch in build_mc_batches(tokenizer, items, batch_size, pack=True, max_length=max_length):
        normed = decoder(model)(**mc_inputs(model, batch), use_cache=False).last_hidden_state
        correct += mc_outcome(batch, choice_loglik(model, batch, normed))[0]
    return correct / len(items)


def _metrics_callback(path: Path, stage: int):
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Append every log step to metrics.jsonl, tagged with the stage."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                record = {"stage": stage, "step": state.global_step, "time": time.time(), **logs}
                with path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")

    return MetricsCallback()


def train_stage(model: nn.Module, tokenizer, examples: list[dict], recipe: Recipe, work_dir: Path, stage: int,
                metrics_path: Path) -> nn.Module:
    """Train ``model`` for one stage and return the plain (merged) model.

    Frozen blocks (``plan.frozen``) get no trainable parameters: with LoRA their adapters are frozen, with full
    fine-tuning their weights.
    """
    from transformers import Trainer, TrainingArguments, set_seed

    cfg = recipe.train
    plan = get_plan(model)
    set_seed(cfg.seed + stage)  # before peft draws the adapters' initial weights: same seed, same run
    trainee = _prepare(model, recipe, plan.frozen)
    args = TrainingArguments(
        output_dir=str(work_dir),
        max_steps=cfg.steps_per_stage,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed + stage,
        data_seed=cfg.seed + stage,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = Trainer(model=trainee, args=args, train_dataset=examples, data_collator=SFTCollator(pad_id),
                      callbacks=[_metrics_callback(metrics_path, stage)])
    trainer.train()
    merged = trainee.merge_and_unload() if recipe.lora.method == "lora" else trainee
    merged.trimllm_plan = plan
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged.eval()


def _prepare(model: nn.Module, recipe: Recipe, frozen: list[int]) -> nn.Module:
    plan = get_plan(model)
    if recipe.lora.method == "full":
        model.requires_grad_(True)
        if frozen:
            freeze_blocks(model, frozen)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    layers = get_layers(peft_model.get_base_model())
    for orig in frozen:
        for param in layers[plan.position(orig)].parameters():
            param.requires_grad_(False)
    return peft_model
