"""The shared hook helper: the residual stream around every block (input, after attention, output).

One-pass scorers (block influence, angular distance, activation norm) read these three states. They are taken
with hooks on the blocks themselves, not from ``output_hidden_states``: the model's last hidden state is already
after the final norm, so ``hidden_states[-1]`` is not the last block's output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from trimllm.architectures import decoder, get_arch, get_layers
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import parse
from trimllm.scoring.forward import hooks
from trimllm.surgery import get_plan, unwrap


@dataclass
class Streams:
    """Residual states of one batch, per block position: ``inputs[p]``, ``mids[p]`` (after the attention
    branch, before the MLP branch) and ``outputs[p]``; ``mask`` marks real (non-padding) tokens."""

    inputs: list[torch.Tensor]
    mids: list[torch.Tensor]
    outputs: list[torch.Tensor]
    mask: torch.Tensor

    def last_token(self, states: torch.Tensor) -> torch.Tensor:
        """The state at each sequence's last real token (right padding)."""
        last = self.mask.sum(dim=1) - 1
        return states[torch.arange(states.shape[0], device=states.device), last]


@torch.no_grad()
def residual_streams(model: nn.Module, batches: list[dict]) -> Iterator[Streams]:
    """Yield the residual streams of each language-modelling batch; all hooks are removed afterwards."""
    model = unwrap(model)
    arch = get_arch(model)
    device = next(model.parameters()).device
    for batch in batches:
        inputs, mids, outputs = {}, {}, {}
        with hooks([]) as handles:
            for pos, layer in enumerate(get_layers(model)):
                handles.append(layer.register_forward_pre_hook(_store(inputs, pos, kwarg="hidden_states"), with_kwargs=True))
                handles.append(layer.register_forward_hook(_store_output(outputs, pos)))
                mlp_norm = getattr(layer, arch.mlp_norms[0])
                handles.append(mlp_norm.register_forward_pre_hook(_store(mids, pos), with_kwargs=True))
            mask = batch["attention_mask"].to(device)
            decoder(model)(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False)
        n = len(get_layers(model))
        yield Streams([inputs[p] for p in range(n)], [mids[p] for p in range(n)], [outputs[p] for p in range(n)],
                      mask.bool())


def _store(target: dict, pos: int, kwarg: str | None = None):
    def hook(module, args, kwargs):
        target[pos] = args[0] if args else kwargs[kwarg]

    return hook


def _store_output(target: dict, pos: int):
    def hook(module, args, output):
        target[pos] = output[0] if isinstance(output, tuple) else output

    return hook


def token_average(model: nn.Module, tokenizer, texts: list[str], candidates: list[str], metric,
                  batch_size: int = 8, max_length: int = 1024) -> dict[str, float]:
    """``metric(before, after)`` -> one value per token, averaged over the real tokens of ``texts``, for every
    candidate (before / after = the residual state around the block or half)."""
    plan = get_plan(model)
    totals = {c: 0.0 for c in candidates}
    tokens = 0
    for streams in residual_streams(model, build_lm_batches(tokenizer, texts, batch_size, max_length)):
        for candidate in candidates:
            kind, index = parse(candidate)
            before, after = branch_states(streams, kind, plan.position(index))
            totals[candidate] += float(metric(before.float(), after.float())[streams.mask].sum())
        tokens += int(streams.mask.sum())
    return {c: v / tokens for c, v in totals.items()}


def branch_states(streams: Streams, kind: str, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(state before, state after) the candidate: the block, its attention half or its MLP half."""
    if kind == "block":
        return streams.inputs[pos], streams.outputs[pos]
    if kind == "attn":
        return streams.inputs[pos], streams.mids[pos]
    return streams.mids[pos], streams.outputs[pos]
