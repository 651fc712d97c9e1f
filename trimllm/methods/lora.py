"""LoRA (Hu et al. 2022) via peft: adapters on ``lora.target_modules``, merged into the weights at the end of each
stage, so the next surgery acts on plain weights and every stage starts fresh adapters."""

from __future__ import annotations

import warnings

from torch import nn

from trimllm.architectures import get_layers
from trimllm.methods import METHODS
from trimllm.surgery import get_plan


@METHODS.register()
class Lora:
    optim = "adamw_torch"
    bf16 = False

    def prepare(self, model: nn.Module, tokenizer, recipe, spec, work_dir) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        plan = get_plan(model)
        config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=recipe.lora.dropout,
                            target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")
        with warnings.catch_warnings():
            # peft reads transformers 5's deprecated `is_gradient_checkpointing`: a FutureWarning on every stage
            # that no user can act on (the attribute is theirs, not ours)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
            trainee = get_peft_model(model, config)
        layers = get_layers(trainee.get_base_model())
        for orig in plan.frozen:
            layers[plan.position(orig)].requires_grad_(False)
        return trainee

    def merge(self, model: nn.Module, trainee: nn.Module, trainer=None) -> nn.Module:
        return trainee.merge_and_unload()

    def trained(self, trainee: nn.Module, state_dict: dict) -> dict:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(trainee, state_dict=state_dict)

    def apply(self, model: nn.Module, trainee: nn.Module, weights: dict, device) -> nn.Module:
        return merge_into(model, trainee.peft_config["default"], weights, device)


def merge_into(model: nn.Module, lora_config, adapters: dict, device) -> nn.Module:
    """Merge adapter weights trained on another copy (4-bit, or sharded) into the full-precision ``model`` on
    ``device`` (peft does the math)."""
    from peft import get_peft_model, set_peft_model_state_dict

    model.to(device)
    full = get_peft_model(model, lora_config)
    set_peft_model_state_dict(full, adapters)
    return full.merge_and_unload()
