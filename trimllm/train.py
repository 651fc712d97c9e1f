"""One stage of training on a transformers ``Trainer``: LoRA via peft (merged at the end of the stage, so the
next surgery acts on plain weights) or full fine-tuning. A fresh Trainer, optimizer and scheduler per stage,
because the model's structure changed since the last one.

The examples, the length-grouped sampler, the collator and the answer-only loss live in :mod:`trimllm.sft`; this
module runs them on a Trainer and reports what a stage did (tokens real / padded, tokens/s, peak memory).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from trimllm.architectures import get_layers
from trimllm.config import Recipe
from trimllm.distributed import barrier, is_main, on_main, world_size
from trimllm.prompts import MCItem
from trimllm.scoring.calibration import build_mc_batches
from trimllm.scoring.forward import choice_loglik, decoder, mc_inputs, mc_predictions
from trimllm.sft import LengthGroupedSampler, SFTCollator, answer_loss, pad_id
from trimllm.surgery import freeze_blocks, get_plan, unwrap

logger = logging.getLogger(__name__)


def mc_accuracy(model: nn.Module, tokenizer, items: list[MCItem], batch_size: int = 8, max_length: int = 512) -> float:
    """Multiple-choice accuracy with lm-eval's rule (highest summed log-likelihood), on packed rows."""
    return sum(mc_correct(model, tokenizer, items, batch_size, max_length)) / len(items)


@torch.no_grad()
def mc_correct(model: nn.Module, tokenizer, items: list[MCItem], batch_size: int = 8,
               max_length: int = 512) -> list[bool]:
    """Whether each item (in the order given) is answered right by lm-eval's rule, on packed rows: the per-item
    outcomes that a paired comparison of two models on the same items needs."""
    model.eval()
    correct = [False] * len(items)
    for batch in build_mc_batches(tokenizer, items, batch_size, pack=True, max_length=max_length):
        normed = decoder(model)(**mc_inputs(model, batch), use_cache=False).last_hidden_state
        for index, (predicted, gold, _) in zip(batch.indices, mc_predictions(batch, choice_loglik(model, batch, normed)),
                                               strict=True):
            correct[index] = predicted == gold
    return correct


class StageMetrics(TrainerCallback, ExportableState):
    """Counts the stage's training tokens (real, and as computed with padding) and appends every log step to
    metrics.jsonl (rank 0 only), tagged with the stage, with those counts, the real tokens/s of this session and
    the peak memory. Its counts are saved in every Trainer checkpoint (``ExportableState``), so a resumed stage
    counts on from where it stopped."""

    def __init__(self, path: str, stage: int, real: int = 0, padded: int = 0):
        self.path, self.stage, self.real, self.padded = str(path), stage, real, padded
        self._start = (time.perf_counter(), real)

    def count(self, attention_mask: torch.Tensor, accelerator) -> None:
        """Add one micro-batch of every process: its real tokens and its padded width x rows."""
        counts = torch.tensor([int(attention_mask.sum()), attention_mask.numel()], device=attention_mask.device)
        real, padded = accelerator.gather(counts).view(-1, 2).sum(0).tolist()
        self.real += real
        self.padded += padded

    def tokens_per_s(self) -> float:
        started, real = self._start
        return (self.real - real) / max(time.perf_counter() - started, 1e-9)

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), self.real)
        reset_peak_memory()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            record = {"stage": self.stage, "step": state.global_step, "time": time.time(), **logs,
                      "tokens_real": self.real, "tokens_padded": self.padded,
                      "tokens_per_s": round(self.tokens_per_s(), 1), "peak_memory_mb": round(peak_memory_mb(), 1)}
            with Path(self.path).open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def state(self) -> dict:
        return {"args": {"path": self.path, "stage": self.stage, "real": self.real, "padded": self.padded},
                "attributes": {}}


def peak_memory_mb() -> float:
    """Peak memory since :func:`reset_peak_memory` (the stage's start): allocated CUDA memory on a GPU, else the
    process's peak resident set (Linux ``VmHWM``; where it cannot be reset, the peak since the process began)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory() -> None:
    """Start a new peak: loading and converting the model peak higher than training and are not the stage's."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident set size (VmHWM)


@dataclass
class StageStats:
    """What a stage's training did: tokens (real / as computed with padding), seconds, peak memory."""

    tokens_real: int
    tokens_padded: int
    seconds: float
    peak_memory_mb: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_real / max(self.seconds, 1e-9)


class StageTrainer(Trainer):
    """The Trainer with trimllm's two additions: length-grouped batches (:class:`trimllm.sft.LengthGroupedSampler`
    in place of the random sampler, unless ``train.group_by_length`` is off) and token counting."""

    def __init__(self, *args, group_by_length: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        args = self.args
        group = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        return LengthGroupedSampler([len(e["input_ids"]) for e in dataset], group, seed=args.data_seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        metrics = next(c for c in self.callback_handler.callbacks if isinstance(c, StageMetrics))
        metrics.count(inputs["attention_mask"], self.accelerator)
        return super().training_step(model, inputs, num_items_in_batch)


def callbacks(metrics_path: Path, stage: int) -> list:
    """The Trainer callbacks of a stage (the resume tests add one that kills the process)."""
    return [StageMetrics(metrics_path, stage)]


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete Trainer checkpoint in ``work_dir``: the Trainer writes ``trainer_state.json`` last, so a
    checkpoint killed while being written has none and is skipped."""
    if not work_dir.is_dir():
        return None
    complete = [p for p in work_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def train_stage(model: nn.Module, tokenizer, examples: list[dict], recipe: Recipe, work_dir: Path, stage: int,
                metrics_path: Path, resume: bool = False, extra_callbacks: list = (),
                steps: int | None = None) -> tuple[nn.Module, StageStats]:
    """Train ``model`` for one stage; return the plain (merged) model and what the training did.

    Frozen blocks (``plan.frozen``) get no trainable parameters: with LoRA their adapters are frozen, with full
    fine-tuning their weights. ``steps`` defaults to ``train.steps_per_stage``. ``extra_callbacks`` are added to the Trainer's (the benchmarks time steps). With ``resume``, training continues from the newest complete checkpoint in
    ``work_dir`` (optimizer, scheduler, RNG and data position included); ``model`` must already have the stage's
    structure. With ``lora.method: qlora`` the adapters train on a 4-bit NF4 copy and are merged into ``model``'s
    full-precision weights (see :func:`merge_into`). Under FSDP / DeepSpeed (``train.fsdp``, ``train.deepspeed``) a
    copy is trained and sharded; its gathered weights are applied to ``model`` (see :func:`_merge_gathered`).
    """
    from transformers import set_seed

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
    trainer = StageTrainer(model=trainee, args=training_arguments(recipe, work_dir, stage, steps),
                           train_dataset=examples, data_collator=SFTCollator(pad_id(tokenizer)),
                           compute_loss_func=answer_loss, callbacks=stage_callbacks,
                           group_by_length=cfg.group_by_length)
    checkpoint = last_checkpoint(work_dir) if resume else None
    if checkpoint is not None:
        logger.info("stage %d: resuming from %s", stage, checkpoint)
    started = time.perf_counter()
    with contextlib.ExitStack() as context:
        context.enter_context(_attention_kernels())
        if pld is not None:
            context.enter_context(pld)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    counts = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StageMetrics))  # resume replaces it
    stats = StageStats(counts.real, counts.padded, time.perf_counter() - started, peak_memory_mb())
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
    return merged.eval(), stats


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
        restore_callback_states_from_checkpoint=True,  # StageMetrics' token counts continue on resume
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
