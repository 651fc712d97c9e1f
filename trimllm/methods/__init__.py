"""Training methods (``lora.method``): how a stage turns the model into something the Trainer trains, and the
trained result back into a plain model that the next surgery and the export act on. One file each in this
folder, registered under its file name: ``lora`` (peft), ``qlora`` (4-bit NF4 copy + LoRA), ``full``.

A method is a class with:

- ``prepare(model, tokenizer, recipe, spec, work_dir) -> trainee``: frozen blocks (``plan.frozen``) get no
  trainable parameters; ``spec`` (:class:`trimllm.stages.StageSpec`) says the stage's adapter size;
- ``merge(model, trainee, trainer) -> model``: the plain model with the training applied (``trainer``, the
  stage's Trainer, is what the sharded wrapper gathers through);
- ``trained(trainee, state_dict) -> dict`` and ``apply(model, trainee, weights, device) -> model``: what training
  changed, taken from a (gathered) state dict, and its application to the untouched ``model`` — what the sharded
  wrapper needs;
- ``optim`` (the Trainer optimizer for ``train.optim: auto``) and ``bf16`` (mixed precision on a GPU).

Under FSDP / DeepSpeed (``train.fsdp``, ``train.deepspeed``) :class:`Sharded` wraps any of them.
"""

from __future__ import annotations

import copy

from torch import nn

from trimllm.registry import Registry

METHODS: Registry = Registry("training method")


class Sharded:
    """FSDP / ZeRO-3 shard the module they train in place, so a copy is trained (the full-precision model waits on
    the host, like QLoRA's), and at the end of the stage the trained weights are gathered (a collective: every rank
    calls it; accelerate returns the full state dict on rank 0), what training changed is given to every rank and
    applied to the untouched model."""

    def __init__(self, method):
        self.method = method
        self.optim, self.bf16 = method.optim, method.bf16

    def prepare(self, model: nn.Module, tokenizer, recipe, spec, work_dir) -> nn.Module:
        return self.method.prepare(copy.deepcopy(model.to("cpu")), tokenizer, recipe, spec, work_dir)

    def merge(self, model: nn.Module, trainee: nn.Module, trainer) -> nn.Module:
        from trimllm.distributed import on_main
        from trimllm.modeling import default_device

        gathered = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        weights = on_main(lambda: {k: v.detach().cpu() for k, v in self.method.trained(trainee, gathered).items()})
        return self.method.apply(model, trainee, weights, default_device())  # "cuda": the rank's own GPU


def for_recipe(recipe, name: str | None = None):
    """The recipe's training method (``name``: a stage's own, :attr:`trimllm.stages.StageSpec.method`; default
    ``lora.method``), wrapped in :class:`Sharded` under FSDP / DeepSpeed."""
    method = METHODS.get(name or recipe.lora.method)()
    return Sharded(method) if is_sharded(recipe) else method


def is_sharded(recipe) -> bool:
    """FSDP or DeepSpeed: the Trainer shards the module it trains, so its in-memory weights are not the model's."""
    return bool(recipe.train.fsdp) or bool(recipe.train.deepspeed)


CHECKPOINTING_PARAMS = 1e9  # train.gradient_checkpointing: auto turns it on from this size (README "Sizes and memory")


def checkpointing(setting: bool | str, model: nn.Module | None) -> bool:
    """``train.gradient_checkpointing`` for ``model``: ``auto`` is on from 1 B parameters. A LoRA step of a 1 B
    model keeps every block's float32 activations otherwise: at batch 8 x 512 tokens that is more than a 24 GB host
    holds (scripts/bench_scale.py); recomputing them costs about a third more compute."""
    if setting != "auto":
        return bool(setting)
    return model is not None and model.num_parameters() >= CHECKPOINTING_PARAMS


METHODS.discover(__name__)

__all__ = ["METHODS", "Sharded", "checkpointing", "for_recipe", "is_sharded"]
