"""study_v3.py's token counts: the sizes its compute count reads for the teacher-logit cache's build."""

from __future__ import annotations

from study import MAX_LENGTH, n_train

from trimllm.data import load_side


def mean_tokens(task: str, tokenizer, examples: int) -> float:
    """Mean tokens of a training example (prompt + answer) over the budget's examples: the cache build's size."""
    from trimllm.prompts import mc_item
    from trimllm.sft import sft_examples

    items = [mc_item(task, r) for r in load_side(task, "train")[:examples]]
    examples = sft_examples(tokenizer, items, MAX_LENGTH[task])
    return sum(len(e["input_ids"]) for e in examples) / len(examples)


def corpus_tokens(args, tokenizer, n: int) -> tuple[dict, dict]:
    """Per task: how many of ``n`` records' support passages oneshot-corpus's ``distill.corpus`` distils (seed 0's
    draw; an empty support is left out) and their mean tokens."""
    from trimllm.config import DataConfig
    from trimllm.formats import corpus_examples

    sizes, means = {}, {}
    for task in (t for t in args.tasks.split(",") if t == "sciq"):  # the bundled set with a text field
        cfg = DataConfig(task=task, n_train=n_train(task, args), n_validation=args.n_validation, n_calibration=64,
                         max_length=MAX_LENGTH[task])
        examples = corpus_examples(cfg, tokenizer, "support", n)
        sizes[task], means[task] = len(examples), sum(len(e["input_ids"]) for e in examples) / len(examples)
    return sizes, means
