"""Full fine-tuning: every weight of the kept, unfrozen blocks trains."""

from __future__ import annotations

from torch import nn

from trimllm.methods import METHODS
from trimllm.surgery import freeze_blocks, get_plan


@METHODS.register()
class Full:
    optim = "adamw_torch"
    bf16 = False

    def prepare(self, model: nn.Module, tokenizer, recipe, spec, work_dir) -> nn.Module:
        frozen = get_plan(model).frozen
        model.requires_grad_(True)
        if frozen:
            freeze_blocks(model, frozen)
        return model

    def merge(self, model: nn.Module, trainee: nn.Module, trainer=None) -> nn.Module:
        return trainee

    def trained(self, trainee: nn.Module, state_dict: dict) -> dict:
        return state_dict

    def apply(self, model: nn.Module, trainee: nn.Module, weights: dict, device) -> nn.Module:
        model.load_state_dict(weights)
        return model.to(device)
