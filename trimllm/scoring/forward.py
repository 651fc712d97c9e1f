"""Forward passes for scoring: hook-based capture, exact suffix re-runs, choice log-likelihoods, LM loss.

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

from trimllm.architectures import get_arch, get_layers, get_submodule
from trimllm.scoring.calibration import MCBatch, packed_attention_mask
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


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack without its LM head (``model.model`` for the supported families)."""
    model = unwrap(model)
    return get_submodule(model, get_arch(model).layers_path.rpartition(".")[0])


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
def hidden_without(model: nn.Module, calls: list[LayerCall], candidate: str) -> torch.Tensor:
    """Final hidden states (before the final norm) of the model with ``candidate`` skipped, re-running only
    the blocks from the candidate on."""
    model = unwrap(model)
    layers = get_layers(model)
    kind, index = parse(candidate)
    start = get_plan(model).position(index)
    hidden = calls[start].hidden
    if kind != "block":
        with skipping(model, candidate):
            hidden = calls[start].call(layers[start], hidden)
    for position in range(start + 1, len(layers)):
        hidden = calls[position].call(layers[position], hidden)
    return hidden


def final_norm(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    model = unwrap(model)
    return get_submodule(model, get_arch(model).final_norm)(hidden)


def lm_logits(model: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """LM-head logits of already-normed hidden states (with the family's final soft-capping, if any)."""
    model = unwrap(model)
    logits = model.get_output_embeddings()(normed).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def mc_inputs(model: nn.Module, batch: MCBatch) -> dict:
    model = unwrap(model)
    device = next(model.parameters()).device
    mask = packed_attention_mask(batch, model.config, next(model.parameters()).dtype)
    mask = {k: v.to(device) for k, v in mask.items()} if isinstance(mask, dict) else mask.to(device)
    return {"input_ids": batch.input_ids.to(device), "position_ids": batch.position_ids.to(device), "attention_mask": mask}


def choice_loglik(model: nn.Module, batch: MCBatch, normed: torch.Tensor, at_targets: bool = False) -> torch.Tensor:
    """Summed log-probability of each choice (flat over the batch).

    Args:
        normed: final normed hidden states, either for all positions (``[rows, width, hidden]``) or already
            gathered at the prediction positions (``at_targets=True``, ``[n_targets, hidden]``).
    """
    if not at_targets:
        normed = normed[batch.pred_rows.to(normed.device), batch.pred_cols.to(normed.device)]
    return sum_choice_logprobs(batch, lm_logits(model, normed))


def sum_choice_logprobs(batch: MCBatch, logits_at_targets: torch.Tensor) -> torch.Tensor:
    """Add up each choice's token log-probabilities, given the logits at the prediction positions."""
    device = logits_at_targets.device
    logprobs = torch.log_softmax(logits_at_targets.float(), dim=-1)
    picked = logprobs.gather(1, batch.target_ids.to(device)[:, None])[:, 0]
    sums = torch.zeros(batch.n_choices, dtype=picked.dtype, device=device)
    return sums.index_add_(0, batch.target_choice.to(device), picked).cpu()


def mc_outcome(batch: MCBatch, loglik: torch.Tensor) -> tuple[int, float]:
    """Number of items whose highest-scoring choice is gold, and the sum of the gold choices' log-likelihoods."""
    correct, gold_ll = 0, 0.0
    for predicted, gold, scores in mc_predictions(batch, loglik):
        correct += int(predicted == gold)
        gold_ll += float(scores[gold])
    return correct, gold_ll


def mc_predictions(batch: MCBatch, loglik: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """Per item of the batch, in batch order: (predicted choice, gold choice, the choices' log-likelihoods);
    the prediction is lm-eval's ``acc`` rule, the choice of highest summed log-likelihood."""
    out, offset = [], 0
    for n, gold in zip(batch.item_choices, batch.gold, strict=True):
        scores = loglik[offset : offset + n]
        out.append((int(torch.argmax(scores)), gold, scores))
        offset += n
    return out


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


def shifted_targets(states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The states (or logits) that predict each labelled next token, and those tokens (-100 labels dropped)."""
    targets = labels[:, 1:].to(states.device)
    keep = targets != -100
    return states[:, :-1][keep], targets[keep]
