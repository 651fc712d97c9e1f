"""Forward passes for scoring: hook-based capture, exact suffix re-runs, LM loss.

The fast exact scan rests on one observation: skipping candidate ``p`` leaves everything before block ``p``
unchanged. So one base pass records, for every block, the hidden state that enters it and the keyword
arguments the model passed it (masks, rotary embeddings); scoring candidate ``p`` then re-runs only blocks
``p..L-1`` from that state, and applies the LM head only where a log-probability is needed. Every hook is
removed before the function returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from trimllm.architectures import decoder, final_norm, get_layers, lm_logits
from trimllm.scoring.candidates import parse, skipping
from trimllm.surgery import get_plan, unwrap


@dataclass
class LayerCall:
    """How the model called one block: its positional args (hidden state first) and keyword args."""

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def call(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.args:
            out = layer(hidden, *self.args[1:], **self.kwargs)
        else:
            out = layer(**{**self.kwargs, "hidden_states": hidden})
        return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def hooks(handles: list) -> Iterator[list]:
    """Collect hook handles and remove them all on exit, whatever happens."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture_calls(model: nn.Module, **inputs) -> tuple[list[LayerCall], torch.Tensor]:
    """Run the decoder once; return each block's call and the final (normed) hidden states."""
    calls: list[LayerCall] = []
    with hooks([]) as handles:
        for layer in get_layers(unwrap(model)):
            handles.append(
                layer.register_forward_pre_hook(lambda m, a, k: calls.append(LayerCall(a, dict(k))), with_kwargs=True)
            )
        hidden = decoder(model)(**inputs, use_cache=False).last_hidden_state
    return calls, hidden


@torch.no_grad()
def hidden_without(model: nn.Module, calls: list[LayerCall], candidate: str, n: int = 1) -> torch.Tensor:
    """Final hidden states (before the final norm) of the model with ``candidate`` skipped (a block candidate: the
    run of ``n`` blocks from it, cut at the last block), re-running only the blocks after it."""
    model = unwrap(model)
    layers = get_layers(model)
    kind, index = parse(candidate)
    start = get_plan(model).position(index)
    hidden = calls[start].hidden
    if kind != "block":
        with skipping(model, candidate):
            hidden = calls[start].call(layers[start], hidden)
    for position in range(start + (n if kind == "block" else 1), len(layers)):
        hidden = calls[position].call(layers[position], hidden)
    return hidden


def lm_loss_from_hidden(model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, normed: bool = False,
                        chunk: int = 1024) -> tuple[float, int]:
    """Summed next-token cross-entropy and token count from final hidden states (pre-norm unless ``normed``),
    with the LM head applied in chunks to the labelled positions only."""
    selected, wanted = shifted_targets(hidden, labels)
    total = 0.0
    for start in range(0, selected.shape[0], chunk):
        states = selected[start : start + chunk]
        logits = lm_logits(model, states if normed else final_norm(model, states))
        total += float(F.cross_entropy(logits, wanted[start : start + chunk], reduction="sum"))
    return total, int(wanted.numel())


def full_lm_loss(model: nn.Module, inputs: dict, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy and token count from a whole-model forward (LM head on every position)."""
    logits, targets = shifted_targets(model(**inputs, use_cache=False).logits.float(), labels)
    return float(F.cross_entropy(logits, targets, reduction="sum")), int(targets.numel())


def shifted_targets(states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The states (or logits) that predict each labelled next token, and those tokens (-100 labels dropped)."""
    targets = labels[:, 1:].to(states.device)
    keep = targets != -100
    return states[:, :-1][keep], targets[keep]
