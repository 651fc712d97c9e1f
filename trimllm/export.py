"""Standard Hugging Face export of a compressed model: safetensors, config, tokenizer, ``plan.json``, model card.

Whole-block drops are physical, so the export is an ordinary checkpoint with fewer layers. A bypassed attention
or MLP branch cannot be expressed in a standard config, so it is exported as the family's ordinary module with
all weights zero: its output projection is zero, so the branch adds exactly zero to the residual stream and plain
``AutoModelForCausalLM.from_pretrained`` gives the same logits. :func:`trimllm.modeling.load_model` reads
``plan.json`` and swaps those zero modules for :class:`~trimllm.surgery.SkippedAttention` /
:class:`~trimllm.surgery.SkippedMLP`, which skip the computation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from trimllm import logits_check
from trimllm.architectures import get_arch, get_submodule
from trimllm.atomic import atomic_directory, temp_prefix
from trimllm.plan import PLAN_FILE, Plan, count_parameters
from trimllm.surgery import SkippedAttention, SkippedMLP, get_plan, unwrap

logger = logging.getLogger(__name__)


def save_compressed(
    model: nn.Module,
    tokenizer,
    out_dir: str | Path,
    plan: Plan | None = None,
    overwrite: bool = False,
    extra_card: str = "",
    recipe: dict | None = None,
) -> Path:
    """Write a standalone, standard checkpoint of ``model`` to ``out_dir``, atomically.

    Args:
        model: the (possibly compressed) ``*ForCausalLM``; peft adapters must be merged first.
        tokenizer: saved beside the weights when given.
        out_dir: target directory; it must not exist or be empty unless ``overwrite``.
        plan: the structural plan (default: the one attached to the model).
        overwrite: replace an existing non-empty ``out_dir``.
        extra_card: markdown appended to the model card (e.g. evaluation results).
        recipe: the resolved recipe that produced the model (``Recipe.to_dict()``), put into the card.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileExistsError: ``out_dir`` is non-empty and ``overwrite`` is False.
    """
    model = unwrap(model)
    plan = plan or get_plan(model)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"Output directory {out_dir} is not empty. Choose another --out, or pass --overwrite to replace it."
        )

    def write(tmp: Path) -> None:
        if tokenizer is not None:  # the model as it is in memory, to prove a reload of the folder (logits_check)
            logits_check.save(model, tokenizer, tmp)
        with standard_modules(model):
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        plan.save(tmp / PLAN_FILE)
        (tmp / "README.md").write_text(model_card(model, plan, extra_card, recipe))

    atomic_directory(out_dir, write)
    logger.info("Saved %d-block model (%s parameters) to %s", len(plan.kept), f"{count_parameters(model):,}", out_dir)
    return out_dir


@contextlib.contextmanager
def standard_modules(model: nn.Module) -> Iterator[None]:
    """Temporarily replace skipped branches by zero-weight standard modules (for saving)."""
    arch = get_arch(model)
    layers = get_submodule(model, arch.layers_path)
    swapped = []
    for pos, layer in enumerate(layers):
        for attr, skipped_type in ((arch.attention, SkippedAttention), (arch.mlp, SkippedMLP)):
            skipped = getattr(layer, attr)
            if isinstance(skipped, skipped_type):
                setattr(layer, attr, _zero_module(model, layer, attr, pos))
                swapped.append((layer, attr, skipped))
    try:
        yield
    finally:
        for layer, attr, skipped in swapped:
            setattr(layer, attr, skipped)


def _zero_module(model: nn.Module, layer: nn.Module, attr: str, pos: int) -> nn.Module:
    # Build the family's own block for this position and keep only the needed branch, so that the
    # saved tensors have exactly the names and shapes plain transformers expects.
    reference = next(model.parameters())
    with torch.device(reference.device):
        fresh = getattr(type(layer)(model.config, pos), attr)
    fresh.to(reference.dtype)
    with torch.no_grad():
        for param in fresh.parameters():
            param.zero_()
    return fresh


def model_card(model: nn.Module, plan: Plan, extra: str = "", recipe: dict | None = None) -> str:
    """A README.md (Hugging Face model card): front matter with ``base_model``, ``datasets``, ``tags``,
    ``pipeline_tag`` and license where known; what was removed; how to load it; the recipe that produced it. No
    path of the machine that made it appears: local models are named by their folder only."""
    import yaml

    params = count_parameters(model)
    removed = plan.modules()["dropped"] or ["nothing"]
    ratio = params / plan.params_original if plan.params_original else 1.0
    front = {"library_name": "transformers", "pipeline_tag": "text-generation", **_origin(plan.base_model),
             "tags": ["trimllm", "layer-pruning"]}
    if recipe:
        front["datasets"] = [recipe["data"]["task"]]
        front["tags"].append(recipe["data"]["task"])
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---",
        f"# {plan.model_type} compressed by trimllm",
        "",
        f"- Base model: `{shown_name(plan.base_model)}` ({plan.num_layers} blocks, {plan.params_original:,} parameters)",
        f"- This model: {len(plan.kept)} blocks, {params:,} parameters ({ratio:.1%} of the base)",
        f"- Removed (base-model indices): {', '.join(removed)}",
        f"- Blocks kept (base-model indices): {plan.kept}",
        "",
        "## Loading",
        "",
        "A standard checkpoint, no custom code:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "```",
    ]
    if plan.bypassed_attention or plan.bypassed_mlp:
        lines += [
            "",
            "Bypassed attention / MLP branches are stored as zero-weight modules, so plain transformers computes",
            "them and adds exactly zero. `trimllm.load_model(PATH)` reads `plan.json` and skips them instead.",
        ]
    lines += ["", "`plan.json` lists every structural edit in the base model's block indices."]
    if extra:
        lines += ["", extra]
    if recipe:
        shown = {**recipe, "output_dir": Path(recipe["output_dir"]).name,
                 "model": {**recipe["model"], "name": shown_name(recipe["model"]["name"])}}
        lines += ["", "## Recipe", "", "The resolved trimllm recipe that produced this model (`trimllm train`):", "",
                  "```yaml", yaml.safe_dump(shown, sort_keys=False).strip(), "```"]
    return "\n".join(lines) + "\n"


def _origin(base_model: str) -> dict:
    """``base_model`` and ``license`` of the card: a packaged model's source on the Hub, or a hub id as given."""
    from trimllm.modeling import PACKAGED_MODELS

    if base_model in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[base_model]
        return {"base_model": packaged.hub_id, "license": packaged.license}
    if not Path(base_model).expanduser().exists() and base_model.count("/") == 1 and not base_model.startswith("/"):
        return {"base_model": base_model}  # a hub id
    return {}  # a local folder: no hub id to cite


def shown_name(spec: str) -> str:
    """A model spec as a card shows it: a local path by its folder's name, anything else as given."""
    path = Path(spec).expanduser()
    return path.name if path.is_absolute() or path.exists() else spec


def cast_export(folder: Path, dtype: str) -> None:
    """Re-save an exported checkpoint's floating-point weights in ``dtype`` (bfloat16 on disk halves a float32
    export); config.json says the new dtype. Integer tensors and files other than weights are left alone."""
    import json

    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    for path in sorted(Path(folder).glob("model*.safetensors")):  # the weights; the logits check stays as recorded
        tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in load_file(path).items()}
        tmp = path.with_name(temp_prefix(path) + "cast")
        save_file(tensors, tmp, metadata={"format": "pt"})
        tmp.replace(path)
    config_path = Path(folder) / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = dtype
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def add_results_to_card(folder: Path, table: str) -> None:
    """Put an evaluation table into the ``## Evaluation`` section of ``folder``'s model card (replacing it)."""
    from trimllm.atomic import write_text_atomic

    card = Path(folder) / "README.md"
    text = card.read_text() if card.is_file() else ""
    head, _, rest = text.partition("\n## Evaluation\n")
    tail = rest[rest.index("\n## "):] if "\n## " in rest else ""
    write_text_atomic(card, head.rstrip("\n") + "\n\n## Evaluation\n\n" + table.strip() + "\n" + tail)
