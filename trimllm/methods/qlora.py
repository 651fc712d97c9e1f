"""QLoRA (Dettmers et al. 2023): the adapters train on a 4-bit NF4 copy (bitsandbytes, double quantization) and
are merged into the full-precision weights, never into the 4-bit tensors, so quantization error does not
accumulate over the stages and surgery and export act on full-precision weights.

Memory: the full-precision copy (2 bytes per parameter in bf16, 4 in fp32) in host memory, plus the 4-bit copy
(about 0.5 byte per parameter) and the adapters on the device.
"""

from __future__ import annotations

import torch
from torch import nn

from trimllm.methods import METHODS
from trimllm.methods.lora import Lora, merge_into


@METHODS.register()
class Qlora(Lora):
    optim = "paged_adamw_8bit"
    bf16 = True

    def prepare(self, model: nn.Module, tokenizer, recipe, spec, work_dir) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        from trimllm.methods import checkpointing

        quantized = quantized_copy(model, tokenizer, work_dir / "base")
        quantized = prepare_model_for_kbit_training(
            quantized, use_gradient_checkpointing=checkpointing(recipe.train.gradient_checkpointing, model))
        return super().prepare(quantized, tokenizer, recipe, spec, work_dir)

    def merge(self, model: nn.Module, trainee: nn.Module, trainer=None) -> nn.Module:
        from peft import get_peft_model_state_dict

        return merge_into(model, trainee.peft_config["default"], get_peft_model_state_dict(trainee), trainee.device)


def quantized_copy(model: nn.Module, tokenizer, directory) -> nn.Module:
    """A 4-bit NF4 copy of ``model`` with the same structure (the full-precision ``model`` moves to the CPU while
    a GPU trains the copy)."""
    from transformers import BitsAndBytesConfig

    from trimllm.distributed import barrier, is_main
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
