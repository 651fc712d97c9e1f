"""One stage of training on a transformers ``Trainer``: LoRA via peft (merged at the end of the stage, so the
next surgery acts on plain weights) or full fine-tuning. A fresh Trainer, optimizer and scheduler per stage,
because the model's structure changed since the last one.

The examples, the length-grouped sampler and the collator live in :mod:`trimllm.sft` (the loss is the model's own,
on the collator's answer-only labels); this
module runs them on a Trainer and reports what a stage did (tokens real / padded, tokens/s, peak memory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState, ProgressCallback

from trimllm.config import Recipe
from trimllm.distributed import is_main, world_size
from trimllm.errors import TrainingDiverged  # noqa: F401  (raised here; re-exported)
from trimllm.rundir import last_checkpoint
from trimllm.sft import LengthGroupedSampler, SFTCollator, pad_id
from trimllm.stages import StageFiles, StageSpec, stage_spec
from trimllm.surgery import get_plan, unwrap

logger = logging.getLogger(__name__)


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
    teacher_seconds: float = 0.0  # distillation: the teacher's forwards (in this process's session of the stage)


class StageTrainer(Trainer):
    """The Trainer with trimllm's two additions: length-grouped batches (:class:`trimllm.sft.LengthGroupedSampler`
    in place of the random sampler, unless ``train.group_by_length`` is off) and token counting."""

    def __init__(self, *args, group_by_length: bool = True, distiller=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length, self.distiller = group_by_length, distiller

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        args = self.args
        group = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        return LengthGroupedSampler([len(e["input_ids"]) for e in dataset], group, seed=args.data_seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own loss on the answer-only labels; with a teacher, the distillation loss
        (:class:`trimllm.distill.Distiller`) around it."""
        if self.distiller is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from trimllm.distill import block_outputs

        if num_items_in_batch is not None:  # a step of distill.corpus text only has no label: CE 0, not 0 / 0
            num_items_in_batch = max(num_items_in_batch, 1)
        hidden = block_outputs(self.accelerator.unwrap_model(model)) if self.distiller.hidden_weight else None
        with hidden or contextlib.nullcontext([]) as states:
            ce, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        scaled = self.args.average_tokens_across_devices and num_items_in_batch is not None  # as the Trainer does
        loss = self.distiller.loss(inputs, ce, outputs.logits, states, num_items_in_batch,
                                   self.current_gradient_accumulation_steps,
                                   self.accelerator.num_processes if scaled else 1)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        metrics = next(c for c in self.callback_handler.callbacks if isinstance(c, StageMetrics))
        metrics.count(inputs["attention_mask"], self.accelerator)
        return super().training_step(model, inputs, num_items_in_batch)


class StageProgress(ProgressCallback):
    """The Trainer's progress bar, tagged with the stage, with log lines of numbers (transformers prints dicts of
    strings: ``{'loss': '7.347'}``)."""

    def __init__(self, stage: int):
        super().__init__()
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(f"stage {self.stage}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(log_line(self.stage, state.global_step, state.max_steps, logs or {}))


def log_line(stage: int, step: int, steps: int, logs: dict) -> str:
    """``stage 1 | step 30/94 | loss 0.9137 | learning_rate 0.0001758 | ...`` (numbers to 4 significant digits)."""
    shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items() if k != "total_flos"]
    return " | ".join([f"stage {stage}", f"step {step}/{steps}", *shown])


def _diverged(stage: int, step: int, recipe: Recipe) -> TrainingDiverged:
    return TrainingDiverged(f"stage {stage}: the weights stopped being finite numbers (NaN / inf) by step {step}; "
                            f"nothing of this stage was exported. Lower train.lr (now {recipe.train.lr}) or raise "
                            "train.warmup_ratio, then rerun the same command: completed stages are kept.")


class FiniteWeights(TrainerCallback):
    """Stops a stage at the first log step where a trained weight is NaN or infinite (a diverged run would
    otherwise train on and export a complete-looking model of NaN)."""

    def __init__(self, stage: int, recipe: Recipe):
        self.stage, self.recipe = stage, recipe

    def on_log(self, args, state, control, model=None, **kwargs):
        if model is not None and not all_finite(p for p in model.parameters() if p.requires_grad):
            raise _diverged(self.stage, state.global_step, self.recipe)


def all_finite(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def callbacks(metrics_path: Path, stage: int) -> list:
    """The Trainer callbacks of a stage (the resume tests add one that kills the process)."""
    return [StageMetrics(metrics_path, stage)]


def train_stage(model: nn.Module, tokenizer, examples: list[dict], recipe: Recipe, spec: StageSpec,
                files: StageFiles, *, teacher: nn.Module | None = None,
                extra_callbacks: list = ()) -> tuple[nn.Module, StageStats]:
    """Train ``model`` for one stage as ``spec`` says (:func:`trimllm.stages.stage_spec`: steps, learning rate,
    adapter, seed, PLD clock); return the plain (merged) model and what the training did.

    The training method (``lora.method``, :mod:`trimllm.methods`) prepares what the Trainer trains and merges the
    result back: frozen blocks (``plan.frozen``) get no trainable parameters. ``extra_callbacks`` are added to the
    Trainer's (the benchmarks time steps). With ``files.resume``, training continues from the newest complete
    checkpoint in ``files.work_dir`` (optimizer, scheduler, RNG, data position and token counts included); ``model``
    must already have the stage's structure. With a ``teacher`` (a ``distill`` section), the loss distills it
    (:mod:`trimllm.distill`).
    """
    from transformers import set_seed

    from trimllm.methods import for_recipe
    from trimllm.pld import ProgressiveLayerDrop, pld_callback

    stage, work_dir, plan = spec.stage, files.work_dir, get_plan(model)
    set_seed(spec.seed)  # before peft draws the adapters' initial weights: same seed, same run
    method = for_recipe(recipe, spec.method)
    distiller = _distiller(recipe, model, teacher)
    trainee = method.prepare(model, tokenizer, recipe, spec, work_dir)
    stage_callbacks = [*callbacks(files.metrics, stage), FiniteWeights(stage, recipe), *extra_callbacks]
    pld = None
    if recipe.pld is not None:
        pld = ProgressiveLayerDrop(unwrap(trainee), recipe.pld.theta_bar, recipe.pld.gamma, seed=recipe.train.seed)
        stage_callbacks.append(pld_callback(pld, spec.pld_offset))
    with _tensorboard_dir(files.tensorboard or work_dir / "tensorboard"):
        trainer = StageTrainer(model=trainee, args=training_arguments(recipe, work_dir, spec, method, model),
                               train_dataset=examples, callbacks=stage_callbacks, group_by_length=recipe.train.group_by_length,
                               data_collator=_collator(tokenizer, distiller),
                               distiller=distiller)
    if trainer.pop_callback(ProgressCallback) is not None:  # the bar (rank 0; other ranks have none)
        trainer.add_callback(StageProgress(stage))
    checkpoint = last_checkpoint(work_dir) if files.resume else None
    if checkpoint is not None:
        logger.info("stage %d: resuming from %s", stage, checkpoint)
    started = time.perf_counter()
    with contextlib.ExitStack() as context:
        context.enter_context(_attention_kernels())
        if pld is not None:
            context.enter_context(pld)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    counts = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StageMetrics))  # resume replaces it
    stats = StageStats(counts.real, counts.padded, time.perf_counter() - started, peak_memory_mb(),
                       distiller.teacher_seconds if distiller else 0.0)
    merged = method.merge(model, trainee, trainer)
    if not all_finite(merged.parameters()):
        raise _diverged(stage, trainer.state.global_step, recipe)
    merged.trimllm_plan = plan
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged.eval(), stats


@contextlib.contextmanager
def _tensorboard_dir(path: Path):
    """Where the Trainer's TensorBoard callback writes: transformers reads TENSORBOARD_LOGGING_DIR when the Trainer
    is built and otherwise writes under the Trainer's output_dir, which trimllm deletes once a stage completes."""
    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR")
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old


def _distiller(recipe: Recipe, model: nn.Module, teacher: nn.Module | None):
    if teacher is None:
        return None
    from trimllm.distill import Distiller, block_pairs

    cfg = recipe.distill
    pairs = block_pairs(model, teacher) if cfg.hidden_weight else ()  # a cache keeps no hidden states (validation)
    return Distiller(teacher, cfg.alpha, cfg.temperature, cfg.tokens, cfg.hidden_weight, pairs)


def _collator(tokenizer, distiller) -> SFTCollator:
    """Distillation at every token needs the logits of every position, at N sampled positions those positions',
    otherwise only the answer window's (``distill.tokens``)."""
    tokens = distiller.tokens if distiller is not None else "answer"
    return SFTCollator(pad_id(tokenizer), all_positions=tokens == "all", sampled=tokens if isinstance(tokens, int) else 0)


def _attention_kernels():
    """Train without cuDNN's fused attention: on an H100 (torch 2.11, bf16) it gave NaN gradients on our
    left-padded batches (SmolLM2 LoRA on Financial PhraseBank diverged at step 14 of 32), while the flash,
    memory-efficient and math kernels trained the same run cleanly. A no-op on CPU."""
    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def training_arguments(recipe: Recipe, work_dir: Path, spec: StageSpec | int = 0, method=None,
                       model: nn.Module | None = None):
    """The stage's TrainingArguments (``spec``: the stage's :class:`trimllm.stages.StageSpec`, or a stage number:
    that stage of an unpruned model; ``model``: what it trains, for ``gradient_checkpointing: auto``).
    ``train.batch_size`` is the global batch: it is split over the processes of a distributed launch, so one
    recipe trains the same way on 1 or N processes."""
    from transformers import TrainingArguments

    from trimllm.methods import checkpointing, for_recipe

    cfg = recipe.train
    spec = stage_spec(recipe, spec, pruned=False) if isinstance(spec, int) else spec
    cuda = torch.cuda.is_available()
    method = method or for_recipe(recipe, spec.method)
    optim = method.optim if cfg.optim == "auto" else cfg.optim
    steps = spec.steps
    checkpoints = 0 < cfg.save_steps < steps
    return TrainingArguments(
        output_dir=str(work_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size // world_size(),
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=spec.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        weight_decay=cfg.weight_decay,
        optim=optim,
        activation_checkpointing=checkpointing(cfg.gradient_checkpointing, model),
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if checkpoints else "no",
        save_steps=cfg.save_steps if checkpoints else 500,
        save_total_limit=1,  # resuming needs only the newest
        report_to=cfg.report_to,
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=not cuda,
        bf16=cuda and method.bf16,
        ddp_backend="gloo" if world_size() > 1 and not cuda else None,
        ddp_find_unused_parameters=recipe.pld is not None,  # a skipped block's adapters get no gradient that step
        fsdp=cfg.fsdp,
        fsdp_config=cfg.fsdp_config,
        deepspeed=cfg.deepspeed,
        remove_unused_columns=False,
        restore_callback_states_from_checkpoint=True,  # StageMetrics' token counts continue on resume
        dataloader_num_workers=0,
        disable_tqdm=not is_main(),
    )
