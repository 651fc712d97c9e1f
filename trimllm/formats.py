"""What a run trains, scores and validates on, per data format, and the lm-eval task of a user's data set.

Three formats (``data.format``), each an lm-eval output type, so the user's templates are rendered by lm-eval's own
task object (:func:`trimllm.prompts.task_object`) and a generated task YAML evaluates the same items:

- ``multiple_choice`` (lm-eval ``multiple_choice``): prompt + gold choice, loss on the answer; validated by accuracy.
- ``completion`` (``loglikelihood``): ``doc_to_text`` -> ``doc_to_target``, loss on the target tokens; appended as
  is, as lm-eval does (start the target with a space). Validated by the target's token probability.
- ``text`` (``loglikelihood_rolling``): a plain domain corpus, causal LM on every token, documents joined with EOS
  and cut into ``max_length`` blocks (no padding). Validated by token probability = 1 / perplexity.

Token probability is ``exp(-mean NLL)`` over the scored tokens: a monotone map of the target log-likelihood (or of
perplexity) into (0, 1] where higher is better, so the accuracy floor ("keep stages at >= floor x stage 0") works
unchanged; for ``text`` it is a ceiling on perplexity, ppl <= ppl_0 / floor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from trimllm.data import draw_splits, load_side
from trimllm.prompts import MCItem, eval_task, item_from_task, mc_item, task_object
from trimllm.user_data import content, task_name, user_sides

if TYPE_CHECKING:
    from trimllm.config import DataConfig

OUTPUT_TYPES = {"multiple_choice": "multiple_choice", "completion": "loglikelihood", "text": "loglikelihood_rolling"}
METRICS = {  # lm-eval's metrics of each output type
    "multiple_choice": ["acc", "acc_norm"],
    "completion": ["perplexity", "acc"],  # acc: the target is the greedy continuation
    "text": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
}
AGGREGATION = {"acc": "mean", "acc_norm": "mean", "perplexity": "perplexity", "word_perplexity": "weighted_perplexity",
               "byte_perplexity": "weighted_perplexity", "bits_per_byte": "bits_per_byte"}  # lm-eval's defaults


@dataclass
class TrainingData:
    """A run's train-side data: training examples, validation and calibration items, and the validation metric."""

    examples: list[dict]
    validation: list[MCItem]
    calibration: list[MCItem]
    metric: str  # acc (multiple choice) or token_prob (completion, text)


@dataclass(frozen=True)
class DataSource:
    """One data set, bundled or the user's own, as a run reads it: its name, format, sides (records carrying
    ``_uid``) and how a record becomes an item. The two constructors are the only place the two differ
    (:meth:`bundled`: the shipped files and prompts, :mod:`trimllm.data`; :meth:`own`: ``data.source`` read and
    rendered through lm-eval's task object, :mod:`trimllm.user_data`); splits, items, examples and the validation
    metric then take one path."""

    name: str
    format: str  # multiple_choice, completion or text (OUTPUT_TYPES)
    train: tuple[dict, ...]
    test: tuple[dict, ...]
    validation: tuple[dict, ...] | None = None  # the user's own validation split; None: drawn from the train side
    config: DataConfig | None = None  # a user data set's settings (its templates); None: a bundled set

    @classmethod
    def bundled(cls, name: str) -> DataSource:
        return cls(name, "multiple_choice", tuple(load_side(name, "train")), tuple(load_side(name, "test")))

    @classmethod
    def own(cls, cfg: DataConfig) -> DataSource:
        sides = user_sides(cfg)
        return cls(task_name(cfg), cfg.format, sides.train, sides.test, sides.validation, cfg)

    @classmethod
    def of(cls, cfg: DataConfig) -> DataSource:
        """The source a :class:`trimllm.config.DataConfig` names: ``data.source`` if set, else ``data.task``."""
        return cls.own(cfg) if cfg.source else cls.bundled(cfg.task)

    @property
    def metric(self) -> str:
        """The validation metric: accuracy for multiple choice, token probability otherwise."""
        return format_metric(self.format)

    def splits(self, n_validation: int, n_calibration: int, seed: int = 0, n_train: int | None = None):
        """The train side drawn into disjoint train / validation / calibration (:func:`trimllm.data.draw_splits`);
        a validation split of the user's own replaces the drawn one."""
        own = self.validation is not None
        splits = draw_splits(list(self.train), self.name, 0 if own else n_validation, n_calibration, seed, n_train)
        if own:
            splits["validation"] = list(self.validation[:n_validation])
        return splits

    def items(self, records: list[dict]) -> list[MCItem]:
        """Records as items (prompt, choices or target, gold): the bundled set's prompt, or the user's templates."""
        if self.config is None:
            return [mc_item(self.name, r) for r in records]
        return user_items(self.config, records)


def data_name(cfg) -> str:
    """The data set's name: the bundled ``data.task``, or the user data set's task name."""
    return task_name(cfg) if cfg.source else cfg.task


def test_task(cfg) -> str:
    """The lm-eval task of the data set's test side: a user data set's own task, a bundled set's trimllm task."""
    return task_name(cfg) if cfg.source else eval_task(cfg.task)


def training_data(cfg, tokenizer) -> TrainingData:
    """The train side of ``cfg`` (a :class:`trimllm.config.DataConfig`) drawn into training, validation and
    calibration (disjoint; no test item), as examples and items of its format."""
    from trimllm.sft import sft_examples

    source = DataSource.of(cfg)
    splits = source.splits(cfg.n_validation, cfg.n_calibration, cfg.seed, cfg.n_train)
    if source.format == "text":
        blocks = text_blocks(tokenizer, [r[cfg.text_field] for r in splits["train"]], cfg.max_length)
        examples = [{"input_ids": b, "labels": [-100, *b[1:]]} for b in blocks]  # no target for token 0
        return TrainingData(examples, _items(source, cfg, tokenizer, splits["validation"]),
                            _items(source, cfg, tokenizer, splits["calibration"]), source.metric)
    items = {k: source.items(v) for k, v in splits.items()}
    return TrainingData(sft_examples(tokenizer, items["train"], cfg.max_length), items["validation"],
                        items["calibration"], source.metric)


def unused_records(cfg) -> list[dict]:
    """The train-side records a run of ``cfg`` neither trains, validates nor calibrates on, in its seeded draw's
    order: those after its ``data.n_train`` training records. None when ``data.n_train`` is null (all train)."""
    if cfg.n_train is None:
        return []
    return DataSource.of(cfg).splits(cfg.n_validation, cfg.n_calibration, cfg.seed, None)["train"][cfg.n_train:]


def held_out_records(cfg, n: int, corpus_n: int = 0) -> list[dict]:
    """Up to ``n`` of :func:`unused_records`, from the front (``trimllm compress`` verifies on them), never one of
    the last ``corpus_n``, whose text a ``distill.corpus`` trains on (:func:`corpus_examples`)."""
    unused = unused_records(cfg)
    return unused[: max(0, min(n, len(unused) - corpus_n))]


def held_out_items(cfg, tokenizer, n: int, corpus_n: int = 0) -> list[MCItem]:
    """:func:`held_out_records` as items to score."""
    return _items(DataSource.of(cfg), cfg, tokenizer, held_out_records(cfg, n, corpus_n))


def corpus_size(recipe) -> int:
    """How many unused records a recipe's ``distill.corpus`` reads (0 without one)."""
    return recipe.distill.corpus_n if recipe.distill is not None and recipe.distill.corpus else 0


def corpus_examples(cfg, tokenizer, field: str, n: int) -> list[dict]:
    """Domain text beyond the task's examples (``distill.corpus``; Minitron distils every token of such text): the
    ``field`` of the last ``n`` :func:`unused_records` (SciQ: the support passages of questions no run trains
    on), one example per non-empty text, cut to ``data.max_length`` tokens. No labels: their loss is the KL to the
    teacher alone (``distill.tokens: all``), so no CE target is invented for plain text."""
    examples = []
    for record in unused_records(cfg)[-n:] if n else []:
        text = record.get(field)
        ids = tokenizer(text, add_special_tokens=False).input_ids[: cfg.max_length] if isinstance(text, str) else []
        if len(ids) >= 2:  # one position to predict at least
            examples.append({"input_ids": ids, "labels": [-100] * len(ids)})
    return examples


def _items(source: DataSource, cfg, tokenizer, records: list[dict]) -> list[MCItem]:
    """Records as items to score: a plain text's blocks as one-choice items (their token probability), else the
    format's items."""
    if source.format != "text":
        return source.items(records)
    blocks = text_blocks(tokenizer, [r[cfg.text_field] for r in records], cfg.max_length)
    return [MCItem(tokenizer.eos_token or "", (tokenizer.decode(b),), 0) for b in blocks]


def format_metric(fmt: str) -> str:
    """A data format's validation metric: accuracy for multiple choice, token probability otherwise."""
    return "acc" if fmt == "multiple_choice" else "token_prob"


def data_metric(cfg) -> str:
    """The validation metric of a :class:`trimllm.config.DataConfig` (a bundled set is multiple choice), without
    reading its data."""
    return format_metric(cfg.format if cfg.source else "multiple_choice")


def item_scores(metric: str, model, tokenizer, items: list[MCItem], batch_size: int, max_length: int) -> list[float]:
    """Each item's own figure, for a paired comparison of two models on the same items: right (1) or wrong (0)
    under lm-eval's rule (``acc``), or its target's token probability ``exp(-mean NLL)`` (``token_prob``)."""
    from trimllm.multiple_choice import mc_correct

    if metric == "acc":
        return [float(ok) for ok in mc_correct(model, tokenizer, items, batch_size, max_length)]
    return [math.exp(loglik / max(tokens, 1))
            for loglik, tokens in target_logliks(model, tokenizer, items, batch_size, max_length)]


def target_logliks(model, tokenizer, items: list[MCItem], batch_size: int, max_length: int) -> list[tuple[float, int]]:
    """Each item's target log-likelihood and its token count (completion and text items: one choice, the target)."""
    from trimllm.multiple_choice import encode_item, mc_logliks

    # A decoded text block re-tokenizes to about its own length: a margin, so that nothing is cut.
    width = max_length + 64
    logliks = mc_logliks(model, tokenizer, items, batch_size, width)
    return [(s[0], len(encode_item(tokenizer, item, width)[1][0])) for s, item in zip(logliks, items, strict=True)]


def lm_eval_config(cfg) -> dict:
    """The lm-eval task config of a user data set (without its data location)."""
    config = {"task": task_name(cfg), "output_type": OUTPUT_TYPES[cfg.format], "test_split": "test"}
    if cfg.format == "text":
        config.update(doc_to_text="", doc_to_target="{{" + cfg.text_field + "}}")
    else:
        config.update(doc_to_text=cfg.doc_to_text, doc_to_target=cfg.doc_to_target)
    if cfg.format == "multiple_choice":
        config.update(doc_to_choice=cfg.doc_to_choice, target_delimiter=cfg.target_delimiter)
    config["metric_list"] = [{"metric": m, "aggregation": AGGREGATION[m], "higher_is_better": m.startswith("acc")}
                             for m in METRICS[cfg.format]]
    config["metadata"] = {"version": 1.0}
    return config


def user_task(cfg, records: list[dict]):
    """lm-eval's task object for the user's templates, over ``records`` (held in memory)."""
    import datasets

    from trimllm.templates import check_templates

    check_templates(cfg)  # no template reaches lm-eval's (unsandboxed) renderer before it is checked
    rows = [content(r) for r in records]
    dataset = datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
    return task_object({**lm_eval_config(cfg), "custom_dataset": lambda **_: dataset})


def user_items(cfg, records: list[dict]) -> list[MCItem]:
    """Items of a ``multiple_choice`` or ``completion`` user data set, rendered by lm-eval's task object."""
    if not records:
        return []
    task = user_task(cfg, records[:1])
    if cfg.format == "multiple_choice":
        return [item_from_task(task, r) for r in records]  # each item carries its record's _uid
    return [MCItem(task.fewshot_context(r, 0), (str(task.doc_to_target(r)),), 0, r.get("_uid", "")) for r in records]


def text_blocks(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Documents joined by EOS and cut into blocks of ``max_length`` tokens (the tail that does not fill a block is
    dropped, as in transformers' language-modelling examples, unless it is all there is)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False).input_ids + eos
    count = max(1, len(ids) // max_length)
    return [ids[i * max_length : (i + 1) * max_length] for i in range(count) if ids[i * max_length :]]


def validation_metric(metric: str, model, tokenizer, items: list[MCItem], batch_size: int, max_length: int) -> float:
    """Accuracy (lm-eval's rule) or token probability ``exp(-mean NLL)`` of the items' targets."""
    from trimllm.multiple_choice import mc_accuracy

    if metric == "acc":
        return mc_accuracy(model, tokenizer, items, batch_size, max_length)
    pairs = target_logliks(model, tokenizer, items, batch_size, max_length)
    return math.exp(sum(loglik for loglik, _ in pairs) / max(sum(tokens for _, tokens in pairs), 1))


def write_task(cfg, folder: Path) -> Path:
    """Write the user data set's lm-eval task into ``folder``: ``<name>.yaml`` and its test side as
    ``<name>_test.jsonl`` (an absolute path in the YAML: lm-eval reads relative ``data_files`` from the working
    directory). ``lm_eval --include_path folder --tasks <name>`` then evaluates it as ``trimllm eval`` does."""
    from trimllm.atomic import write_text_atomic
    from trimllm.templates import check_templates

    check_templates(cfg)  # lm_eval --include_path renders what is written here, outside trimllm
    name = task_name(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    test = (folder / f"{name}_test.jsonl").resolve()
    rows = [content(r) for r in DataSource.own(cfg).test]
    write_text_atomic(test, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
    config = {**lm_eval_config(cfg), "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(test)}}}
    header = f"# lm-eval task written by trimllm for data.source {cfg.source!r}: lm_eval --include_path {folder} --tasks {name}\n"
    path = folder / f"{name}.yaml"
    write_text_atomic(path, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path
