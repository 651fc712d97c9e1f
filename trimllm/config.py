"""The recipe: typed config that mirrors the YAML files in ``recipes/``.

Precedence: ``key=value`` overrides on the command line > the YAML file > the defaults below. A plug-in's own options
live under its key (``schedule.options``, ``scoring.options``) with their defaults in the plug-in's signature
(:mod:`trimllm.plugin_options`). :mod:`trimllm.recipe_file` reads a file and its overrides into these dataclasses;
:func:`trimllm.validation.load_recipe` adds every check of the values (impossible ratios, data that would put test
items into training or calibration, missing data files), all before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import yaml

from trimllm.errors import RecipeError  # noqa: F401  (re-exported: ``from trimllm.config import RecipeError``)


def _failed(checks: list[tuple[bool, str]]) -> list[str]:
    """The messages of the checks that failed (a section's ``problems()``: its values, checked with it)."""
    return [message for ok, message in checks if not ok]


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # packaged name, local dir, .gguf file or hub id (see load_model)
    dtype: str = "auto"  # auto = float32 on CPU, bfloat16 on GPU


@dataclass
class DataConfig:
    task: str = "sciq"  # data set in trimllm.data.DATASETS; its train side feeds training, validation, calibration
    # Your own data (README "Bring your own data"; source, when set, replaces task). The keys read like an lm-eval task
    # YAML: Jinja templates over each record, as lm-eval renders them. Relative paths are read from the working
    # directory; $VARS expand ($TRIMLLM_DATA_DIR defaults to the bundled data folder).
    # a .jsonl / .json / .csv / .parquet file, a folder of them, a datasets hub id, or a mapping of split to file
    # ({train: a.jsonl, test: b.jsonl}: datasets' data_files; read as data.splits over the files' folder)
    source: str | dict | None = None
    name: str | None = None  # the data set's task name (eval.tasks, lm-eval); default: the source's file stem
    format: str = "multiple_choice"  # multiple_choice, completion (prompt -> target text) or text (plain corpus)
    doc_to_text: str | None = None  # the prompt template (multiple_choice, completion)
    doc_to_choice: str | list[str] | None = None  # the choices: a template giving a list, or a list (multiple_choice)
    doc_to_target: str | int | None = None  # gold choice (index, or text among the choices) / the completion's text
    target_delimiter: str = " "  # between prompt and choice (multiple_choice), as in lm-eval
    text_field: str = "text"  # the record field that holds the text (format text)
    process_docs: str | None = None  # module.function or file.py:function: datasets.Dataset -> Dataset (lm-eval's)
    splits: dict | None = None  # {train: file or split, test: file or split[, validation: ...]}; default: carve
    test_fraction: float = 0.2  # share of the records carved into the test side (by content hash) without splits.test
    n_train: int | None = 1000  # training examples per run (None = all the rest of the train side)
    n_validation: int = 200  # validation examples (train side), for the accuracy floor and the stage table
    n_calibration: int = 64  # calibration examples (train side, disjoint from validation and training)
    max_length: int = 512  # tokens per example; contexts are cut on the left
    seed: int = 0  # seed of the train-side draw

    def problems(self) -> list[str]:
        return _failed([
            (self.n_validation >= 1 and self.n_calibration >= 1, "data.n_validation and data.n_calibration must be >= 1"),
            (self.n_train is None or self.n_train >= 1,
             f"data.n_train = {self.n_train} must be >= 1 (null for all the rest of the train side)"),
            (self.max_length >= 1, f"data.max_length = {self.max_length} must be >= 1")])


@dataclass
class ScoringConfig:
    scorer: str = "block_influence"  # any registered scorer (see `trimllm score --help`)
    granularity: str = "block"  # block or sublayer (attention / MLP halves)
    batch_size: int = 8
    # The scorer's own options, its keyword parameters (defaults and ranges in its file under trimllm/scoring/),
    # refused when it does not take them: task_accuracy {proxy_k: 8, proxy: block_influence, proxy_fraction: 0.25}
    # (scan exactly only the k candidates the proxy ranks lowest), angular {n: 2} (run length).
    options: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        return _failed([(self.batch_size >= 1, f"scoring.batch_size = {self.batch_size} must be >= 1")])


@dataclass
class ScheduleConfig:
    name: str = "tuned_oneshot"  # tuned_oneshot, progressive, trimllm, oneshot (the shipped recipes) or none
    # The schedule's own options, its keyword parameters (defaults and ranges in its file under trimllm/schedules/),
    # refused when it does not take them: progressive {per_stage: 2, order: fixed}.
    options: dict = field(default_factory=dict)


@dataclass
class StopConfig:
    target_fraction: float | None = 0.25  # stop once this fraction of blocks (or of halves) is removed
    target_params_fraction: float | None = None  # ... or once this fraction of parameters is removed
    max_modules: int | None = None  # ... or after this many modules in total
    accuracy_floor: float | None = None  # keep stages whose val acc >= floor x stage-0 acc; stop below it
    max_drop: float | None = None  # ... the same in points (absolute): val metric >= stage 0's - max_drop / 100

    def problems(self) -> list[str]:
        floor = self.accuracy_floor
        shares = [(value is None or 0 < value < 1, f"stop.{name} = {value} must be in (0, 1): a share of the model "
                   "to remove") for name, value in (("target_fraction", self.target_fraction),
                                                    ("target_params_fraction", self.target_params_fraction))]
        return _failed([
            (floor is None or 0 < floor <= 1,
             f"stop.accuracy_floor = {floor} must be in (0, 1], e.g. 0.95 (= 95 % of stage-0 accuracy)"), *shares,
            (self.max_modules is None or self.max_modules >= 1,
             f"stop.max_modules = {self.max_modules} must be >= 1 (null for no limit)"),
            (self.max_drop is None or (math.isfinite(self.max_drop) and self.max_drop > 0),
             f"stop.max_drop = {self.max_drop} must be > 0: points of the validation metric, e.g. 1.0 (= one "
             "point of accuracy)")])


@dataclass
class FreezeConfig:
    mode: str = "none"  # none, static (TrimLLM), progtuning, contribution, bottom (partial-layer fine-tuning)
    fraction: float = 0.0  # share of the remaining blocks to freeze

    def problems(self) -> list[str]:
        return _failed([(0 <= self.fraction < 1, f"freeze.fraction = {self.fraction} must be in [0, 1)")])


@dataclass
class LoraConfig:
    method: str = "lora"  # lora (peft, merged after each stage), qlora (4-bit NF4 base) or full (full fine-tuning)
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def problems(self) -> list[str]:
        return _failed([(self.r >= 1, f"lora.r = {self.r} must be >= 1"),
                        (self.alpha > 0, f"lora.alpha = {self.alpha} must be > 0"),
                        (0 <= self.dropout < 1, f"lora.dropout = {self.dropout} must be in [0, 1)")])


@dataclass
class TrainConfig:
    lr: float = 2e-4
    lr_scheduler: str = "cosine"  # decayed fully within each stage
    warmup_ratio: float = 0.05
    batch_size: int = 8
    grad_accum: int = 1
    # Batches of examples of about the same length, drawn in a seeded random order (trimllm.sft): random batches
    # of prompts are mostly padding (SciQ, batch 8: 60 % of the positions). false = the Trainer's random batches.
    group_by_length: bool = True
    steps_per_stage: int = 100
    # Steps of the stage that follows the last removal (recovery, the "healing" of Gromov et al. 2024 and
    # ShortGPT): the finished structure is what gets exported, so it may deserve more than one stage's share.
    final_stage_steps: int | None = None  # None = steps_per_stage
    # Steps of stage 0 (the full-depth fine-tune; oneshot: the pruned model). 0 = no training at stage 0: the
    # model given is already fine-tuned on the domain (e.g. another run's final/), so it is scored, and is the
    # stage0 teacher, as it is.
    stage0_steps: int | None = None  # None = steps_per_stage
    weight_decay: float = 0.0
    logging_steps: int = 5
    save_steps: int = 50  # Trainer checkpoint every N steps inside a stage, for resuming (0 = stage ends only)
    optim: str = "auto"  # auto = adamw_torch (paged_adamw_8bit for qlora), or any Trainer optim name
    gradient_checkpointing: bool | str = "auto"  # auto: on from 1 B parameters (trimllm.methods.checkpointing)
    fsdp: str = ""  # passed to TrainingArguments.fsdp, e.g. "full_shard auto_wrap"
    fsdp_config: dict | None = None
    deepspeed: str | None = None  # path of a DeepSpeed JSON config, passed to TrainingArguments.deepspeed
    # Experiment trackers, as transformers names them (tensorboard, wandb, mlflow, ...); none = the console and
    # metrics.jsonl only. TensorBoard logs go to output_dir/tensorboard/stage_XX (pip install trimllm[tensorboard]).
    report_to: str | list[str] = "none"
    seed: int = 0

    def problems(self) -> list[str]:
        return _failed([
            (self.save_steps >= 0, "train.save_steps must be >= 0 (0 = no checkpoints inside a stage)"),
            (self.steps_per_stage >= 1, "train.steps_per_stage must be >= 1"),
            (self.final_stage_steps is None or self.final_stage_steps >= 1,
             "train.final_stage_steps must be >= 1, or null for steps_per_stage"),
            (self.stage0_steps is None or self.stage0_steps >= 0,
             "train.stage0_steps must be >= 0 (0 = stage 0 does not train), or null for steps_per_stage"),
            (self.gradient_checkpointing in (True, False, "auto"),
             f"train.gradient_checkpointing = {self.gradient_checkpointing!r} must be true, false or auto"),
            (self.lr > 0, "train.lr must be > 0"),
            (math.isfinite(self.lr), f"train.lr = {self.lr} must be a finite number, e.g. 2e-4"),
            *[(value >= 1, f"train.{name} = {value} must be >= 1") for name, value in (
                ("batch_size", self.batch_size), ("grad_accum", self.grad_accum), ("logging_steps", self.logging_steps))],
            (0 <= self.warmup_ratio < 1, f"train.warmup_ratio = {self.warmup_ratio} must be in [0, 1) (a share of a stage's steps)"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, f"train.weight_decay = {self.weight_decay} must be >= 0")])


@dataclass
class PrunedConfig:
    """Overrides for the stages of a pruned model (those after a removal); null = the lora / train value. A pruned
    model has more to recover than a fine-tune: in study v2 a rank-64 adapter beat rank 16 by 3.8 (25 %) and 5.5
    (50 %) points on Financial PhraseBank, and 3x the learning rate added 4.9 (Financial PhraseBank) and 2.5 (SciQ)
    points at rank 64, 50 % removed: one epoch is too short a recovery at the fine-tune's step."""

    r: int | None = None  # lora.r of a pruned model
    alpha: int | None = None  # lora.alpha of a pruned model
    lr: float | None = None  # train.lr of a pruned model
    method: str | None = None  # lora.method of a pruned model (full: every weight trains; give it a smaller lr)

    def problems(self) -> list[str]:
        return _failed([
            (self.r is None or self.r >= 1, f"pruned.r = {self.r} must be >= 1 (null for lora.r)"),
            (self.lr is None or (math.isfinite(self.lr) and self.lr > 0),
             f"pruned.lr = {self.lr} must be a positive number (null for train.lr)"),
            (self.alpha is None or self.alpha > 0, f"pruned.alpha = {self.alpha} must be > 0 (null for lora.alpha)")])


@dataclass
class BridgeConfig:
    """A linear bridge at each cut of removed blocks, fitted on the calibration set and folded into the block before
    the cut, no parameter added (ReplaceMe, Shopkhoev et al. 2025; trimllm.bridge). ``bridge: null`` (the default)
    removes blocks plainly; ``bridge: {}`` bridges with the settings below."""

    ridge: float = 0.01  # pull toward identity (plain removal), relative to the activations' scale; > 0
    n_tokens: int | None = None  # calibration tokens to fit on; null = every token of the calibration texts

    def problems(self) -> list[str]:
        return _failed([
            (self.n_tokens is None or self.n_tokens >= 1,
             f"bridge.n_tokens = {self.n_tokens} must be >= 1 (null for every calibration token)"),
            (math.isfinite(self.ridge) and self.ridge > 0,
             f"bridge.ridge = {self.ridge} must be > 0 (the pull toward plain removal, e.g. 0.01)")])


@dataclass
class PLDConfig:
    """Progressive Layer Dropping during training (Zhang & He 2020); see trimllm.pld. ``pld: null`` (the default)
    trains every block in every step; ``pld: {}`` drops with the settings below."""

    theta_bar: float = 0.5  # the keep ratio theta(t) decays to; in (0, 1]
    gamma: float = 0.001  # decay rate per optimizer step (counted over the whole run); >= 0

    def problems(self) -> list[str]:
        return _failed([(0 < self.theta_bar <= 1 and self.gamma >= 0,
                         f"pld.theta_bar = {self.theta_bar} must be in (0, 1] and pld.gamma = {self.gamma} >= 0")])


@dataclass
class DistillConfig:
    """Distillation from an unpruned teacher while the pruned model trains (Minitron); see trimllm.distill.
    ``distill: null`` (the default) trains on the gold answer only; ``distill: {}`` distils with the settings below."""

    teacher: str = "stage0"  # stage0 (the full-depth model as fine-tuned in stage 0), base, or a model path / spec
    alpha: float = 0.5  # weight of the CE loss on the gold answer; 1 - alpha on the KL (0 = distillation only)
    temperature: float = 1.0
    tokens: str | int = "answer"  # answer: KL at the answer tokens; all: every position; N: answer + N random others
    hidden_weight: float = 0.0  # cosine loss between kept blocks' outputs and the teacher's at their original index
    teacher_dtype: str = "auto"  # auto (the model's dtype), float32, bfloat16, float16: the teacher's forward only
    cache_k: int = 0  # 0: the teacher runs in every step; k > 0: its top-k log-probs, cached once (trimllm.logit_cache)
    cache_dir: str | None = None  # where the cache lives; null = output_dir/teacher_logits (share one across runs)
    corpus: str | None = None  # a text field of train-side records not trained on (sciq: support), distilled too
    corpus_n: int = 2000  # records whose corpus text joins the training examples, KL only (the last of the draw)

    def problems(self) -> list[str]:
        return _failed([
            (0 <= self.alpha <= 1, f"distill.alpha = {self.alpha} must be in [0, 1] (the weight of the CE loss)"),
            (self.temperature > 0, f"distill.temperature = {self.temperature} must be > 0"),
            (self.tokens in ("answer", "all") or (isinstance(self.tokens, int) and self.tokens > 0),
             f"distill.tokens = {self.tokens!r} must be answer, all, or a number N > 0 (the answer tokens and N "
             "other positions per row, drawn at random each step)"),
            (self.hidden_weight >= 0, f"distill.hidden_weight = {self.hidden_weight} must be >= 0"),
            (self.teacher_dtype in ("auto", "float32", "bfloat16", "float16"),
             f"distill.teacher_dtype = {self.teacher_dtype!r} must be auto, float32, bfloat16 or float16"),
            (self.cache_k >= 0, f"distill.cache_k = {self.cache_k} must be >= 0 (0: no cache, the teacher runs live)"),
            (not self.cache_k or (self.temperature == 1 and not self.hidden_weight),
             f"distill.cache_k = {self.cache_k} caches the teacher's probabilities at temperature 1 and no hidden "
             f"states, but distill.temperature = {self.temperature} and distill.hidden_weight = {self.hidden_weight}: "
             "set distill.cache_k=0 to run the teacher live, or temperature=1 and hidden_weight=0"),
            (not self.corpus or (self.tokens == "all" and self.corpus_n >= 1),
             f"distill.corpus = {self.corpus!r} is plain text, distilled at every position: it needs distill.tokens = all "
             f"(got {self.tokens!r}) and distill.corpus_n >= 1 (got {self.corpus_n})")])


@dataclass
class CompressConfig:
    """How ``trimllm compress`` searches for the deepest cut within ``stop.max_drop`` and proves it (README
    "Compress"). Read by that command only; ``compress: null`` (the default) means these settings."""

    step: int | None = None  # blocks between candidate depths; null = an 8th of the blocks (at least 1)
    max_fraction: float = 0.75  # the deepest candidate, a share of the blocks
    probes: int = 2  # healing runs bisecting between the estimates' safe depth and the deepest candidate
    probe_fraction: float = 1.0  # a probe's steps, a share of the final healing's (1: the healing; shorter mislead)
    verify_items: int = 1000  # held-out train-side items (after data.n_train's) for the paired verification
    confidence: float = 0.95  # one-sided: the drop's upper bound at this confidence must be within the tolerance
    backoffs: int = 2  # further healed depths tried, each shallower, when a healed model misses
    runtime: str = "llamacpp"  # where the proof runs: llamacpp (GGUF, with its speed) or transformers (reload only)
    quant: str = "q4_k_m"  # the GGUF type proven and timed beside f16
    test_limit: int | None = None  # test-side documents of the accuracy through the runtime (null = all)

    def problems(self) -> list[str]:
        return _failed([
            (self.step is None or self.step >= 1, f"compress.step = {self.step} must be >= 1 (null for an 8th)"),
            (0 < self.max_fraction < 1, f"compress.max_fraction = {self.max_fraction} must be in (0, 1)"),
            (self.probes >= 0 and self.backoffs >= 0, "compress.probes and compress.backoffs must be >= 0"),
            (0 < self.probe_fraction <= 1, f"compress.probe_fraction = {self.probe_fraction} must be in (0, 1]"),
            (self.verify_items >= 10, f"compress.verify_items = {self.verify_items} must be >= 10"),
            (0.5 <= self.confidence < 1, f"compress.confidence = {self.confidence} must be in [0.5, 1), e.g. 0.95"),
            (self.runtime in ("llamacpp", "transformers"),
             f"compress.runtime = {self.runtime!r} must be llamacpp or transformers"),
            (self.test_limit is None or self.test_limit >= 1, "compress.test_limit must be >= 1, or null for all")])


@dataclass
class ExportConfig:
    """What a run keeps on disk (see README "Disk"). Training always runs, and the resume point is always kept, in
    the model's dtype, so a resumed run equals an uninterrupted one."""

    dtype: str = "auto"  # dtype of final/ and of superseded stages on disk: auto (as trained), bfloat16, float16, float32
    stages: str = "all"  # all: every stage_XX kept; final: only the last two (the resume point, the floor's fallback)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)  # lm-eval tasks / groups run on the final model ([] = none)
    limit: int | None = None
    batch_size: int = 8

    def problems(self) -> list[str]:
        return _failed([
            (self.batch_size >= 1, f"eval.batch_size = {self.batch_size} must be >= 1"),
            (self.limit is None or self.limit > 0, f"eval.limit = {self.limit} must be > 0 (documents per task), or null for all")])


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pruned: PrunedConfig = field(default_factory=PrunedConfig)
    bridge: BridgeConfig | None = None
    pld: PLDConfig | None = None
    distill: DistillConfig | None = None
    compress: CompressConfig | None = None
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/trimllm"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
