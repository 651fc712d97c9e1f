"""trimllm: domain specialization of decoder LLMs with progressive layer dropping."""

from trimllm.plan import Plan

__version__ = "0.1.0"

__all__ = ["Plan", "train", "compress", "evaluate", "load_model", "save_compressed", "drop_blocks", "bypass_attention", "bypass_mlp", "freeze_blocks"]


def __getattr__(name):
    # Lazy re-exports: `import trimllm` stays fast and does not import transformers.
    if name in {"train", "compress"}:
        from trimllm import api

        return getattr(api, name)
    if name == "evaluate":
        from trimllm.evaluation import evaluate

        return evaluate
    if name == "load_model":
        from trimllm.modeling import load_model

        return load_model
    if name == "save_compressed":
        from trimllm.export import save_compressed

        return save_compressed
    if name in {"drop_blocks", "bypass_attention", "bypass_mlp", "freeze_blocks", "apply_plan", "get_plan"}:
        from trimllm import surgery

        return getattr(surgery, name)
    raise AttributeError(f"module 'trimllm' has no attribute {name!r}")
