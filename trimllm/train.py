"""One stage of training on a transformers ``Trainer``: LoRA via peft (merged at the end of the stage, so the
next surgery acts on plain weights) or full fine-tuning. A fresh Trainer, optimizer and scheduler per stage,
because the model's structure changed since the last one.

Supervised fine-tuning follows TrimLLM's setup: the prompt is the task's evaluation prompt, the target is the
gold answer, and the loss is on the answer tokens only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from trimllm.architectures import get_layers
from trimllm.config import Recipe
from trimllm.distributed import barrier, is_main, on_main, world_size
from trimllm.prompts import MCItem
from trimllm.scoring.calibration import build_mc_batches, encode_item
from trimllm.scoring.forward import choice_loglik, decoder, mc_inputs, mc_outcome
from trimllm.surgery import freeze_blocks, get_plan, unwrap

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
    """Left-pads a list of examples into tensors; labels padded with -100.

    Left padding puts every answer at the end of its row, so the LM head only needs the last
    ``longest answer + 1`` positions (``logits_to_keep``): the loss is on answer tokens only, and computing
    vocabulary logits for the prompt would be wasted work (a large share of a small model's compute: SmolLM2's
    LM head is 28M of its 135M parameters). Position ids count from the first real token, so a left-padded row
    gives the same logits as the row alone.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        answer = 1
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, width - n:] = torch.tensor(f["input_ids"])
            labels[row, width - n:] = torch.tensor(f["labels"])
            mask[row, width - n:] = 1
            answer = max(answer, n - next(i for i, t in enumerate(f["labels"]) if t != -100))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels,
                "logits_to_keep": answer + 1}


def answer_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of the answer tokens from the last ``logits_to_keep`` logits (see :class:`SFTCollator`),
    summed and divided by the answer tokens of the whole accumulated (and, distributed, global) batch."""
    logits = outputs.logits[:, :-1].float()
    targets = labels[:, labels.shape[1] - logits.shape[1]:].to(logits.device)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=-100, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.ne(-100).sum()
    return loss / count


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
        """Append every log step to metrics.jsonl (rank 0 only), tagged with the stage."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                record = {"stage": stage, "step": state.global_step, "time": time.time(), **logs}
                with path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")

    return MetricsCallback()


def callbacks(metrics_path: Path, stage: int) -> list:
    """The Trainer callbacks of a stage (the resume tests add one that kills the process)."""
    return [_metrics_callback(metrics_path, stage)]


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete Trainer checkpoint in ``work_dir``: the Trainer writes ``trainer_state.json`` last, so a
    checkpoint killed while being written has none and is skipped."""
    if not work_dir.is_dir():
        return None
    complete = [p for p in work_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def train_stage(model: nn.Module, tokenizer, examples: list[dict], recipe: Recipe, work_dir: Path, stage: int,
                metrics_path: Path, resume: bool = False, extra_callbacks: list = (), steps: int | None = None) -> nn.Module:
    """Train ``model`` for one stage and return the plain (merged) model.

    Frozen blocks (``plan.frozen``) get no trainable parameters: with LoRA their adapters are frozen, with full
    fine-tuning their weights. ``steps`` defaults to ``train.steps_per_stage``. ``extra_callbacks`` are added to the Trainer's (the benchmarks time steps). With ``resume``, training continues from the newest complete checkpoint in
    ``work_dir`` (optimizer, scheduler, RNG and data position included); ``model`` must already have the stage's
    structure. With ``lora.method: qlora`` the adapters train on a 4-bit NF4 copy and are merged into ``model``'s
    full-precision weights (see :func:`merge_into`). Under FSDP / DeepSpeed (``train.fsdp``, ``train.deepspeed``) a
    copy is trained and sharded; its gathered weights are applied to ``model`` (see :func:`_merge_gathered`).
    """
    from transformers import Trainer, set_seed

    from trimllm.pld import ProgressiveLayerDrop, pld_callback

    cfg, plan = recipe.train, get_plan(model)
    set_seed(cfg.seed + stage)  # before peft draws the adapters' initial weights: same seed, same run
    sharded = is_sharded(recipe)
    if recipe.lora.method == "qlora":
        base = quantized_copy(model, tokenizer, work_dir / "base")
    elif sharded:  # FSDP / ZeRO-3 shard the module they train in place: train a copy, merge into this original
        base = copy.deepcopy(model.to("cpu"))  # kept on the host like QLoRA's; the launcher places and shards the copy
    else:
        base = model
    trainee = _prepare(base, recipe, plan.frozen)
    stage_callbacks = [*callbacks(metrics_path, stage), *extra_callbacks]
    pld = None
    if recipe.pld.enabled:
        pld = ProgressiveLayerDrop(unwrap(trainee), recipe.pld.theta_bar, recipe.pld.gamma, seed=cfg.seed)
        stage_callbacks.append(pld_callback(pld, stage * cfg.steps_per_stage))
    trainer = Trainer(model=trainee, args=training_arguments(recipe, work_dir, stage, steps), train_dataset=examples,
                      data_collator=SFTCollator(_pad_id(tokenizer)), compute_loss_func=answer_loss,
                      callbacks=stage_callbacks)
    checkpoint = last_checkpoint(work_dir) if resume else None
    if checkpoint is not None:
        logger.info("stage %d: resuming from %s", stage, checkpoint)
    with contextlib.ExitStack() as context:
        context.enter_context(_attention_kernels())
        if pld is not None:
            context.enter_context(pld)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if sharded:
        merged = _merge_gathered(model, trainee, trainer, recipe.lora.method)
    elif recipe.lora.method == "qlora":
        from peft import get_peft_model_state_dict

        merged = merge_into(model, trainee.peft_config["default"], get_peft_model_state_dict(trainee), trainee.device)
    elif recipe.lora.method == "lora":
        merged = trainee.merge_and_unload()
    else:
        merged = trainee
    merged.trimllm_plan = plan
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged.eval()


def _attention_kernels():
    """Train without cuDNN's fused attention: on an H100 (torch 2.11, bf16) it gave NaN gradients on our
    left-padded batches (SmolLM2 LoRA on Financial PhraseBank diverged at step 14 of 32), while the flash,
    memory-efficient and math kernels trained the same run cleanly. A no-op on CPU."""
    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def training_arguments(recipe: Recipe, work_dir: Path, stage: int, steps: int | None = None):
    """The stage's TrainingArguments. ``train.batch_size`` is the global batch: it is split over the processes of
    a distributed launch, so one recipe trains the same way on 1 or N processes."""
    from transformers import TrainingArguments

    cfg = recipe.train
    cuda = torch.cuda.is_available()
    optim = cfg.optim
    if optim == "auto":
        optim = "paged_adamw_8bit" if recipe.lora.method == "qlora" else "adamw_torch"
    steps = steps or cfg.steps_per_stage
    checkpoints = 0 < cfg.save_steps < steps
    return TrainingArguments(
        output_dir=str(work_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size // world_size(),
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        weight_decay=cfg.weight_decay,
        optim=optim,
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if checkpoints else "no",
        save_steps=cfg.save_steps if checkpoints else 500,
        save_total_limit=1,  # resuming needs only the newest
        report_to=[],
        seed=cfg.seed + stage,
        data_seed=cfg.seed + stage,
        use_cpu=not cuda,
        bf16=cuda and recipe.lora.method == "qlora",
        ddp_backend="gloo" if world_size() > 1 and not cuda else None,
        ddp_find_unused_parameters=recipe.pld.enabled,  # a skipped block's adapters get no gradient that step
        fsdp=cfg.fsdp,
        fsdp_config=cfg.fsdp_config,
        deepspeed=cfg.deepspeed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not is_main(),
    )


def quantized_copy(model: nn.Module, tokenizer, directory: Path) -> nn.Module:
    """A 4-bit NF4 copy of ``model`` (QLoRA, Dettmers et al. 2023) via bitsandbytes, with the same structure.

    The full-precision ``model`` is kept (on the CPU while training on a GPU): the adapters are merged into it,
    never into the 4-bit tensors, so quantization error does not accumulate over the stages. Memory cost: the
    full-precision copy (2 bytes per parameter in bf16, 4 in fp32) in host memory, plus the 4-bit copy (about
    0.5 byte per parameter) and the adapters on the device.
    """
    from transformers import BitsAndBytesConfig

    from trimllm.export import save_compressed
    from trimllm.modeling import load_model

    if is_main():
        save_compressed(model, tokenizer, directory, overwrite=True)
    barrier()
    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=compute)
    quantized, _ = load_model(directory, dtype=compute, quantization_config=nf4)
    if torch.cuda.is_available():
        model.to("cpu")
    return quantized


def merge_into(model: nn.Module, lora_config, adapters: dict, device) -> nn.Module:
    """Merge adapter weights trained on another copy (4-bit, or sharded) into the full-precision ``model`` on
    ``device`` (peft does the math)."""
    from peft import get_peft_model, set_peft_model_state_dict

    model.to(device)
    full = get_peft_model(model, lora_config)
    set_peft_model_state_dict(full, adapters)
    return full.merge_and_unload()


def is_sharded(recipe: Recipe) -> bool:
    """FSDP or DeepSpeed: the Trainer shards the module it trains, so its in-memory weights are not the model's."""
    return bool(recipe.train.fsdp) or bool(recipe.train.deepspeed)


def _merge_gathered(model: nn.Module, trainee, trainer, method: str) -> nn.Module:
    """The end of a sharded stage: gather the trained weights (a collective: every rank calls it; accelerate
    returns the full state dict on rank 0), keep what training changed (the adapters, or every weight with full
    fine-tuning), give it to every rank and apply it to the untouched full-precision ``model``."""
    from peft import get_peft_model_state_dict

    from trimllm.modeling import default_device

    gathered = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    device = default_device()  # "cuda" is the rank's own GPU: torchrun / accelerate set it
    if method == "full":
        weights = on_main(lambda: {k: v.detach().cpu() for k, v in gathered.items()})
        model.load_state_dict(weights)
        return model.to(device)
    adapters = on_main(lambda: {k: v.detach().cpu() for k, v in get_peft_model_state_dict(
        trainee, state_dict=gathered).items()})
    return merge_into(model, trainee.peft_config["default"], adapters, device)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _prepare(model: nn.Module, recipe: Recipe, frozen: list[int]) -> nn.Module:
    plan = get_plan(model)
    if recipe.lora.method == "full":
        model.requires_grad_(True)
        if frozen:
            freeze_blocks(model, frozen)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if recipe.lora.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    layers = get_layers(peft_model.get_base_model())
    for orig in frozen:
        for param in layers[plan.position(orig)].parameters():
            param.requires_grad_(False)
    return peft_model
