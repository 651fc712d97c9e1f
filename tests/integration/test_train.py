"""The stage loop end to end on a tiny model: every schedule and freezing mode, outputs, determinism, floors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tests.conftest import ROOT, flat, save_tiny
from trimllm.cli import app
from trimllm.pipeline import run
from trimllm.validation import load_recipe

pytestmark = pytest.mark.integration

TINY_RUN = ["data.n_train=16", "data.n_validation=8", "data.n_calibration=4", "data.max_length=96",
            "train.steps_per_stage=2", "train.batch_size=4", "train.logging_steps=1", "scoring.batch_size=8"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("tiny") / "qwen2")


def run_tiny(tiny_dir, out, *overrides):
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml",
                         [f"model.name={tiny_dir}", f"output_dir={out}", *TINY_RUN, *overrides])
    return run(recipe)


MEASURED = {"seconds", "peak_memory_mb"}  # a stage record's figures that depend on the machine, not the run


def without_times(plan: dict) -> dict:
    return {**plan, "stages": [{k: v for k, v in s.items() if k not in MEASURED} for s in plan["stages"]]}


@pytest.mark.parametrize(
    "schedule, overrides, expected_removed",
    [
        ("progressive", ["scoring.scorer=block_influence", "schedule.options.per_stage=1", "stop.target_fraction=0.34"], 2),
        ("trimllm", ["stop.target_fraction=0.25", "scoring.scorer=task_accuracy"], 3),
        ("oneshot", ["stop.target_fraction=0.5", "scoring.scorer=angular"], 3),
        ("tuned_oneshot", ["stop.target_fraction=0.5"], 3),
        ("none", [], 0),
    ],
)
def test_every_schedule_runs_and_writes_its_outputs(tiny_dir, tmp_path, schedule, overrides, expected_removed):
    out = tmp_path / schedule
    plan = run_tiny(tiny_dir, out, f"schedule={schedule}", *overrides)
    removed = plan["stages"][-1]["removed"]
    units = sum(2 if m.startswith("block.") else 1 for m in removed) if schedule == "trimllm" else len(removed)
    assert units == expected_removed, removed
    for name in ("resolved.yaml", "run.json", "metrics.jsonl", "report.md", "loss.png", "accuracy.png", "final/plan.json"):
        assert (out / name).is_file(), name
    for stage in plan["stages"]:
        assert (out / stage["dir"] / "model.safetensors").is_file()
        assert 0.0 <= stage["val_acc"] <= 1.0 and set(stage["seconds"]) == {"scoring", "training", "evaluation"}
    if schedule == "tuned_oneshot":  # full-depth fine-tune, then everything removed at once from the tuned model
        assert [len(st["dropped"]) for st in plan["stages"]] == [0, 3] and plan["stages"][1]["last"]
    if schedule == "oneshot":
        assert len(plan["stages"]) == 1 and len(plan["stages"][0]["dropped"]) == 3
    if schedule in ("progressive", "trimllm"):
        assert plan["stages"][0]["dropped"] == [] and all(len(s["dropped"]) == 1 for s in plan["stages"][1:])
        assert all(s["scores"] for s in plan["stages"][1:])
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert final.config.num_hidden_layers == plan["stages"][-1]["blocks_kept"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {m["stage"] for m in metrics if "loss" in m} == {s["stage"] for s in plan["stages"]}


def test_trimllm_schedule_drops_one_half_per_stage(tiny_dir, tmp_path):
    plan = run_tiny(tiny_dir, tmp_path / "t", "schedule=trimllm", "stop.max_modules=2",
                    "stop.target_fraction=null", "scoring.scorer=task_accuracy")
    for stage in plan["stages"][1:]:
        (dropped,) = stage["dropped"]
        assert dropped.split(".")[0] in ("attn", "mlp")
        assert all(c.split(".")[0] in ("attn", "mlp") for c in stage["scores"])
        attn = min(v for c, v in stage["scores"].items() if c.startswith("attn."))
        mlp = min(v for c, v in stage["scores"].items() if c.startswith("mlp."))
        assert dropped.startswith("attn.") == (attn < mlp)


@pytest.mark.parametrize("mode", ["static", "progtuning", "contribution", "bottom"])
def test_freezing_modes(tiny_dir, tmp_path, mode):
    plan = run_tiny(tiny_dir, tmp_path / mode, f"freeze.mode={mode}", "freeze.fraction=0.5",
                    "schedule.options.per_stage=1", "stop.target_fraction=0.34")
    frozen = [s["frozen"] for s in plan["stages"]]
    assert all(f for f in frozen[1:])
    if mode == "static":
        assert all(set(f) <= set(frozen[0]) for f in frozen)  # fixed at stage 0 (minus dropped blocks)
    if mode == "progtuning":
        assert frozen[0] == ["block.0", "block.1"]  # bottom-up: round(0.5 * 6 * 1/2) = 2 at stage 0
        for stage in plan["stages"]:
            kept = [i for i in range(6) if f"block.{i}" not in stage["removed"]]
            assert stage["frozen"] == [f"block.{i}" for i in kept[: len(stage["frozen"])]]
    if mode == "contribution":
        assert all(len(f) == round(0.5 * s["blocks_kept"]) for f, s in zip(frozen, plan["stages"], strict=True))
    if mode == "bottom":  # the lowest half of what is kept, at every stage
        for stage in plan["stages"]:
            kept = [i for i in range(6) if f"block.{i}" not in stage["removed"]]
            assert stage["frozen"] == [f"block.{i}" for i in kept[: round(0.5 * len(kept))]]


@pytest.mark.parametrize("mode", ["static", "bottom"])
def test_frozen_blocks_are_not_trained(tiny_dir, tmp_path, mode):
    plan = run_tiny(tiny_dir, tmp_path / "full", f"freeze.mode={mode}", "freeze.fraction=0.5", "lora.method=full",
                    "schedule=none")
    frozen = {int(b.split(".")[1]) for b in plan["stages"][0]["frozen"]}
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "final")
    for i in range(6):
        same = all(torch.equal(a, b) for a, b in zip(base.model.layers[i].parameters(),
                                                      trained.model.layers[i].parameters(), strict=True))
        assert same == (i in frozen), i
    if mode == "bottom":  # partial-layer fine-tuning: the top half and the LM head are trained in full
        assert frozen == {0, 1, 2}
        assert not torch.equal(base.lm_head.weight, trained.lm_head.weight)


def test_same_seed_same_plan(tiny_dir, tmp_path):
    first = run_tiny(tiny_dir, tmp_path / "a", "schedule.options.per_stage=1", "stop.target_fraction=0.34")
    second = run_tiny(tiny_dir, tmp_path / "b", "schedule.options.per_stage=1", "stop.target_fraction=0.34")
    strip = lambda p: {**without_times(p), "recipe": None}  # noqa: E731  (output_dir differs)
    assert strip(first) == strip(second)


def test_accuracy_floor_chooses_the_smallest_model_that_meets_it(tiny_dir, tmp_path):
    plan = run_tiny(tiny_dir, tmp_path / "floor", "stop.target_fraction=0.5", "stop.accuracy_floor=0.5",
                    "schedule.options.per_stage=1")
    reference = plan["stages"][0]["val_acc"]
    eligible = [s for s in plan["stages"] if s["val_acc"] >= 0.5 * reference]
    assert plan["final"]["stage"] == min(eligible, key=lambda s: (s["params"], -s["val_acc"]))["stage"]
    assert plan["final"]["reference_val_acc"] == reference


def test_cli_validate_reports_every_problem_at_once():
    result = CliRunner().invoke(app, ["validate", str(ROOT / "recipes" / "smoke.yaml"), "train.lrr=1",
                                      "stop.target_fraction=2", "data.task=medqa_usmle", "scoring.scorer=taylr"])
    assert result.exit_code == 2
    text = flat(result.output)
    assert "4 problem(s)" in text and "Did you mean 'lr'" in text and "Did you mean 'taylor'" in text
    assert "must be in (0, 1)" in text and "has no train side" in text


def test_cli_train_refuses_a_used_output_dir(tiny_dir, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    result = CliRunner().invoke(app, ["train", str(ROOT / "recipes" / "smoke.yaml"), f"output_dir={tmp_path / 'used'}",
                                      f"model.name={tiny_dir}", *TINY_RUN])
    assert result.exit_code == 2 and "not empty" in flat(result.output)


def test_parameter_target_stops_the_loop(tiny_dir, tmp_path):
    plan = run_tiny(tiny_dir, tmp_path / "params", "stop.target_fraction=null", "stop.target_params_fraction=0.2",
                    "schedule.options.per_stage=1")
    original = plan["params_original"]
    assert plan["stages"][-1]["params"] <= 0.8 * original < plan["stages"][-2]["params"]


def test_progressive_layer_dropping_run(tiny_dir, tmp_path):
    plan = run_tiny(tiny_dir, tmp_path / "pld", "pld={}", "pld.gamma=1.0", "schedule.options.per_stage=1",
                    "stop.target_fraction=0.34", "train.steps_per_stage=4")
    assert [len(s["removed"]) for s in plan["stages"]] == [0, 1, 2]
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "pld" / "final")
    assert "forward" not in final.model.layers[0].__dict__ and final.config.num_hidden_layers == 4


def test_pruned_rank_and_lr_give_the_pruned_model_its_own_adapter(tiny_dir, tmp_path, monkeypatch):
    """lora.pruned_r / pruned_alpha and train.pruned_lr: tuned_oneshot's full-depth stage 0 trains rank 2 at lr
    1e-3, the pruned stage 1 rank 6 at 3e-3."""
    from trimllm import training
    from trimllm.methods.lora import Lora

    ranks, prepare, rates, arguments = [], Lora.prepare, [], training.training_arguments

    def recording_arguments(*args, **kwargs):
        made = arguments(*args, **kwargs)
        rates.append(made.learning_rate)
        return made

    monkeypatch.setattr(training, "training_arguments", recording_arguments)

    def recording(self, model, *args):
        trainee = prepare(self, model, *args)
        config = trainee.peft_config["default"]
        ranks.append((config.r, config.lora_alpha))
        return trainee

    monkeypatch.setattr(Lora, "prepare", recording)
    plan = run_tiny(tiny_dir, tmp_path / "r", "schedule=tuned_oneshot", "stop.target_fraction=0.34", "lora.r=2",
                    "lora.alpha=4", "lora.pruned_r=6", "lora.pruned_alpha=12", "train.lr=1e-3", "train.pruned_lr=3e-3")
    assert [len(s["removed"]) for s in plan["stages"]] == [0, 2] and ranks == [(2, 4), (6, 12)]
    assert rates == [1e-3, 3e-3]


def test_final_stage_steps_train_the_last_structure_longer(tiny_dir, tmp_path):
    out = tmp_path / "recovery"
    plan = run_tiny(tiny_dir, out, "schedule.options.per_stage=1", "stop.target_fraction=0.34", "train.final_stage_steps=5")
    steps = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            steps[record["stage"]] = max(steps.get(record["stage"], 0), record["step"])
    assert [len(s["removed"]) for s in plan["stages"]] == [0, 1, 2]
    assert steps == {0: 2, 1: 2, 2: 5}  # steps_per_stage=2 (TINY_RUN) until the removal that reaches the target
    assert "(5 after the last removal)" in (out / "report.md").read_text()


def test_stage0_steps_zero_starts_from_the_given_model_as_it_is(tiny_dir, tmp_path):
    """train.stage0_steps=0: stage 0 exports the model given, untouched, and is the stage0 teacher of what follows."""
    out = tmp_path / "from-final"
    plan = run_tiny(tiny_dir, out, "schedule.options.per_stage=1", "stop.target_fraction=0.34", "train.stage0_steps=0",
                    "distill={}", "scoring.order=fixed")
    steps = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            steps[record["stage"]] = max(steps.get(record["stage"], 0), record["step"])
    assert steps == {1: 2, 2: 2} and plan["stages"][0]["tokens"] == {"real": 0, "padded": 0}
    given = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    stage0 = AutoModelForCausalLM.from_pretrained(out / "stage_00").state_dict()
    assert all(torch.equal(given[k], stage0[k]) for k in given)
    assert [len(s["removed"]) for s in plan["stages"]] == [0, 1, 2]


def test_rerun_removes_what_killed_atomic_writes_left_behind(tiny_dir, tmp_path):
    out = tmp_path / "litter"
    first = run_tiny(tiny_dir, out, "schedule=none")
    (out / ".stage_01.tmp-abc").mkdir()
    (out / ".stage_01.tmp-abc" / "model.safetensors").write_bytes(b"half")
    (out / ".run.json.tmp-123").write_text("{")
    (out / ".final.old-42").mkdir()
    again = run_tiny(tiny_dir, out, "schedule=none")  # the same recipe: resumes (here: already finished)
    assert without_times(again) == without_times(first)
    # only trimllm's working folder and the run lock remain (the lock file stays: see trimllm.rundir.unlock)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name not in (".trainer", ".lock")) == []


def test_length_grouping_trains_the_same_tokens_with_less_padding_and_reports_them(tiny_dir, tmp_path, caplog):
    one_epoch = ["schedule=none", "train.steps_per_stage=4"]  # 16 examples, batch 4
    with caplog.at_level("INFO", logger="trimllm"):
        grouped = run_tiny(tiny_dir, tmp_path / "grouped", *one_epoch)["stages"][0]
    plain = run_tiny(tiny_dir, tmp_path / "random", *one_epoch, "train.group_by_length=false")["stages"][0]
    assert grouped["tokens"]["real"] == plain["tokens"]["real"]  # the same examples, once each
    assert grouped["tokens"]["real"] <= grouped["tokens"]["padded"] < plain["tokens"]["padded"]
    assert grouped["peak_memory_mb"] > 0
    metrics = [json.loads(line) for line in (tmp_path / "grouped" / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    assert (last["tokens_real"], last["tokens_padded"]) == (grouped["tokens"]["real"], grouped["tokens"]["padded"])
    assert last["tokens_per_s"] > 0 and last["peak_memory_mb"] > 0
    report = (tmp_path / "grouped" / "report.md").read_text()
    assert f"{grouped['tokens']['real']:,} / {grouped['tokens']['padded']:,}" in report
    final_line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run: ")]
    assert final_line and f"tokens {grouped['tokens']['real']:,} real / {grouped['tokens']['padded']:,} computed" in final_line[0]


def test_fixed_order_removes_in_the_order_scored_once_on_the_stage0_model(tiny_dir, tmp_path):
    plan = run_tiny(tiny_dir, tmp_path / "fixed", "schedule.options.per_stage=1", "stop.target_fraction=0.5")  # the default
    first = plan["stages"][1]["scores"]
    order = sorted(first, key=first.get)
    assert [s["dropped"][0] for s in plan["stages"][1:]] == order[:3]
    rescored = run_tiny(tiny_dir, tmp_path / "rescore", "scoring.order=rescore", "schedule.options.per_stage=1",
                        "stop.target_fraction=0.5")
    assert rescored["stages"][1]["dropped"] == plan["stages"][1]["dropped"]  # the same first decision
    assert len(rescored["stages"][2]["scores"]) == 5  # rescoring scores the 5 remaining blocks anew


def test_distillation_from_the_stage0_teacher_changes_the_loss(tiny_dir, tmp_path):
    common = ["schedule.options.per_stage=1", "stop.target_fraction=0.34"]
    distilled = run_tiny(tiny_dir, tmp_path / "kd", *common, "distill={}", "distill.alpha=0",
                         "distill.tokens=all", "distill.hidden_weight=0.5")
    plain = run_tiny(tiny_dir, tmp_path / "ce", *common)
    assert [s["dropped"] for s in distilled["stages"]][:2] == [s["dropped"] for s in plain["stages"]][:2]

    def losses(out):
        return [(m["stage"], m["loss"]) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if "loss" in m]

    kd, ce = losses(tmp_path / "kd"), losses(tmp_path / "ce")
    assert [x for x in kd if x[0] == 0] == [x for x in ce if x[0] == 0]  # stage 0 trains the teacher: CE only
    assert [x for x in kd if x[0] == 1] != [x for x in ce if x[0] == 1]  # later stages distill
    # distill.teacher_dtype: the stage-0 teacher reloaded in bfloat16: stage 1's losses move by its rounding only
    run_tiny(tiny_dir, tmp_path / "kd16", *common, "distill={}", "distill.alpha=0", "distill.tokens=all",
             "distill.hidden_weight=0.5", "distill.teacher_dtype=bfloat16")
    kd16 = [loss for stage, loss in losses(tmp_path / "kd16") if stage == 1]
    kd32 = [loss for stage, loss in kd if stage == 1]
    assert kd16 != kd32 and kd16 == pytest.approx(kd32, rel=0.05)


def test_pruned_method_full_trains_every_weight_of_the_pruned_model_only(tiny_dir, tmp_path):
    """``pruned.method: full`` (issue 31: an adapter may cap what a pruned model recovers): the full-depth stage 0
    trains its LoRA adapter (merged: the embedding is untouched), the pruned stage trains every weight."""
    out = tmp_path / "full-pruned"
    run_tiny(tiny_dir, out, "schedule=tuned_oneshot", "stop.target_fraction=0.34", "pruned.method=full",
             "pruned.lr=1e-4")
    embedding = "model.embed_tokens.weight"
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()[embedding]
    stage0 = AutoModelForCausalLM.from_pretrained(out / "stage_00").state_dict()[embedding]
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert torch.equal(stage0, base) and not torch.equal(final.state_dict()[embedding], base)
    assert final.config.num_hidden_layers == 4


def test_a_cached_teacher_trains_as_the_live_one_and_is_shared_across_runs(tiny_dir, tmp_path):
    """``distill.cache_k`` = the whole vocabulary: the pruned stages' losses are the live teacher's (within the
    cache's float16); the cache sits in the run folder, and a second run pointed at it (``distill.cache_dir``) with
    the same teacher reads it instead of building another; ``distill.tokens: N`` trains too."""
    common = ["schedule.options.per_stage=1", "stop.target_fraction=0.34", "distill={}", "distill.alpha=0",
              "distill.tokens=all"]
    run_tiny(tiny_dir, tmp_path / "live", *common)
    run_tiny(tiny_dir, tmp_path / "cached", *common, "distill.cache_k=96")

    def losses(out):
        return [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if "loss" in m and m["stage"] > 0]

    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "live"), rel=2e-3)
    caches = list((tmp_path / "cached" / "teacher_logits").glob("*/cache.json"))
    assert len(caches) == 1
    built = caches[0].stat().st_mtime_ns
    run_tiny(tiny_dir, tmp_path / "again", *common[:-1], "distill.tokens=4", "distill.cache_k=96",
             f"distill.cache_dir={tmp_path / 'cached' / 'teacher_logits'}")
    assert caches[0].stat().st_mtime_ns == built and not (tmp_path / "again" / "teacher_logits").exists()
    assert len(losses(tmp_path / "again")) == 4 and all(math.isfinite(x) for x in losses(tmp_path / "again"))


@pytest.mark.parametrize("method", [["lora.method=full", "train.lr=1e-4"], ["lora.method=qlora", "lora.r=2"],
                                    ["pld={}", "pld.gamma=1.0"]], ids=["full", "qlora", "pld"])
def test_distillation_trains_with_every_method_and_pld(tiny_dir, tmp_path, method):
    """The stage-0 teacher distils into a full fine-tune, a QLoRA adapter and a PLD run alike: the pruned stages'
    losses are finite and differ from the same run without a teacher, and the final model loads."""
    common = ["schedule.options.per_stage=1", "stop.target_fraction=0.34", *method]
    run_tiny(tiny_dir, tmp_path / "kd", *common, "distill={}", "distill.alpha=0")
    run_tiny(tiny_dir, tmp_path / "ce", *common)

    def pruned_losses(out):
        return [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if "loss" in m and m["stage"] > 0]

    kd, ce = pruned_losses(tmp_path / "kd"), pruned_losses(tmp_path / "ce")
    assert len(kd) == len(ce) == 4 and all(torch.isfinite(torch.tensor(kd))) and kd != ce
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "kd" / "final").config.num_hidden_layers == 4


def distilled_rows(monkeypatch) -> list[tuple[int, ...]]:
    """The real tokens of every row the distillation loss is computed on, appended as the run goes."""
    from trimllm.distill import Distiller

    seen: list[tuple[int, ...]] = []
    loss = Distiller.loss

    def recording(self, inputs, *args):
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True):
            seen.append(tuple(ids[mask.bool()].tolist()))
        return loss(self, inputs, *args)

    monkeypatch.setattr(Distiller, "loss", recording)
    return seen


def test_the_teacher_sees_train_side_examples_only(tiny_dir, tmp_path, monkeypatch):
    """Distillation: every row the teacher gets is one of the run's train examples (prompt + gold answer), never a
    test-side document, checked against sciq's whole test side encoded the same way."""
    from transformers import AutoTokenizer

    from trimllm.data import load_side, train_side_splits
    from trimllm.prompts import mc_item
    from trimllm.sft import sft_examples

    seen = distilled_rows(monkeypatch)
    run_tiny(tiny_dir, tmp_path / "kd", "schedule.options.per_stage=1", "stop.target_fraction=0.34", "distill={}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)

    def encoded(records):
        return {tuple(e["input_ids"]) for e in sft_examples(tokenizer, [mc_item("sciq", r) for r in records], 96)}

    train = encoded(train_side_splits("sciq", 8, 4, 0, 16)["train"])
    assert len(seen) == 2 * 2 * 4 and set(seen) <= train  # stages 1 and 2, 2 steps of batch 4
    assert not set(seen) & encoded(load_side("sciq", "test"))


def test_a_corpus_of_support_passages_is_cached_and_distilled_beside_the_examples(tiny_dir, tmp_path, monkeypatch):
    """``distill.corpus: support``: the teacher's cache covers the 16 training examples and the corpus rows; the
    student is distilled on both (a corpus row is the support passage of a record outside the run's draw), and every
    pruned-stage loss is finite."""
    from transformers import AutoTokenizer

    from trimllm.config import DataConfig
    from trimllm.formats import unused_records

    seen = distilled_rows(monkeypatch)
    out = tmp_path / "corpus"
    run_tiny(tiny_dir, out, "schedule.options.per_stage=1", "stop.target_fraction=0.34", "train.steps_per_stage=6",
             "distill={}", "distill.tokens=all", "distill.cache_k=96", "distill.corpus=support", "distill.corpus_n=8")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    records = unused_records(DataConfig(task="sciq", n_train=16, n_validation=8, n_calibration=4))[-8:]
    passages = {tuple(tokenizer(r["support"], add_special_tokens=False).input_ids[:96]) for r in records if r["support"]}
    meta = json.loads(next((out / "teacher_logits").glob("*/cache.json")).read_text())
    assert meta["examples"] == 16 + len(passages) and len(passages) >= 6
    assert passages <= set(seen) and len(seen) == 2 * meta["examples"]  # stages 1, 2: 6 steps of 4 = one epoch each
    losses = [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "loss" in m and m["stage"] > 0]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)


def test_no_warning_a_user_cannot_act_on(tiny_dir, tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_tiny(tiny_dir, tmp_path / "quiet", "schedule=none")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_report_to_tensorboard_writes_event_files_in_the_run_folder(tiny_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_tiny(tiny_dir, out, "schedule=oneshot", "stop.target_fraction=0.34", "train.report_to=tensorboard")
    stage = out / "tensorboard" / "stage_00"
    events = EventAccumulator(str(stage)).Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 2 and all(v > 0 for v in losses)  # logging_steps=1, 2 steps
    assert not (out / ".trainer").exists()  # the Trainer's folder is gone, the logs stayed


def test_export_dtype_and_stages_keep_disk_small_and_the_resume_point_exact(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    plan = run_tiny(tiny_dir, out, "schedule.name=progressive", "schedule.options.per_stage=1", "stop.target_fraction=0.34",
                    "export.dtype=bfloat16", "export.stages=final")
    assert [s["dir"] for s in plan["stages"]] == ["stage_00", "stage_01", "stage_02"]
    assert not (out / "stage_00").exists()  # older than the last two

    def dtypes(folder):
        return {t.dtype for t in load_file(out / folder / "model.safetensors").values()}

    assert dtypes("stage_01") == {torch.bfloat16}  # superseded: cast
    assert dtypes("stage_02") == {torch.float32}  # the resume point stays as trained
    assert dtypes("final") == {torch.bfloat16}
    assert json.loads((out / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    size = {d: (out / d / "model.safetensors").stat().st_size for d in ("stage_02", "final")}
    assert size["final"] < 0.6 * size["stage_02"]
    plain = AutoModelForCausalLM.from_pretrained(out / "final")  # loads anywhere, as bfloat16
    assert next(plain.parameters()).dtype == torch.bfloat16 and plain.config.num_hidden_layers == 4


def test_tuned_oneshot_is_progressive_removing_everything_at_stage_1(tiny_dir, tmp_path):
    """tuned_oneshot = progressive with one removal stage of the whole budget: the same blocks, scored on the same
    stage-0 fine-tuned model, and the same trained result."""
    tuned = run_tiny(tiny_dir, tmp_path / "tuned", "schedule=tuned_oneshot", "stop.target_fraction=0.5")
    progressive = run_tiny(tiny_dir, tmp_path / "progressive", "schedule.name=progressive", "schedule.options.per_stage=99",
                           "stop.target_fraction=0.5")
    assert without_times(tuned)["stages"] == without_times(progressive)["stages"]


def test_a_bridged_run_differs_from_plain_removal_only_in_the_block_before_each_cut(tiny_dir, tmp_path):
    """``bridge: {}``: the same blocks go; the bridge is folded into the output projection of the kept block before
    each run of removed blocks, and nothing else changes (no parameter added: the family's own architecture)."""
    from safetensors.torch import load_file

    common = ["schedule=oneshot", "stop.target_fraction=0.34", "train.stage0_steps=0", "scoring.scorer=depth"]
    plain = run_tiny(tiny_dir, tmp_path / "plain", *common)
    bridged = run_tiny(tiny_dir, tmp_path / "bridged", *common, "bridge={}")
    removed = plain["stages"][0]["removed"]
    assert removed == bridged["stages"][0]["removed"] == ["block.4", "block.5"]  # depth: the last blocks
    a = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    b = load_file(tmp_path / "bridged" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    changed = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert changed == ["model.layers.3.mlp.down_proj.weight"], changed
    assert bridged["stages"][0]["val_acc"] >= 0  # validated like any stage
