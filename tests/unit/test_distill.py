"""Distillation: the loss against a KL computed by hand (answer tokens and every token, T != 1, alpha 0 and 0.5),
a student identical to its teacher gets no distillation loss or gradient, the cosine term pairs the right blocks
after removals, and the recipe checks."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import build_tiny, tiny_tokenizer
from trimllm.config import RecipeError
from trimllm.distill import Distiller, block_outputs, block_pairs, kd_sum, load_teacher
from trimllm.sft import SFTCollator
from trimllm.surgery import drop_blocks
from trimllm.validation import load_recipe

EXAMPLES = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]},
            {"input_ids": [11, 12, 13], "labels": [-100, -100, 13]}]


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_t || p_s) of one position, written out term by term."""
    p_t = torch.softmax(teacher.double() / temperature, -1)
    p_s = torch.softmax(student.double() / temperature, -1)
    return sum(p_t[v] * (torch.log(p_t[v]) - torch.log(p_s[v])) for v in range(p_t.shape[0])) * temperature**2


def test_kd_sum_is_the_masked_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]])
    total, count = kd_sum(student, teacher, mask, temperature=2.0)
    expected = sum(hand_kl(student[b, p], teacher[b, p], 2.0) for b in range(2) for p in range(3) if mask[b, p])
    assert int(count) == 4
    torch.testing.assert_close(total.double(), expected, rtol=1e-5, atol=1e-6)


def student_and_teacher():
    teacher = build_tiny("llama").eval()
    student = copy.deepcopy(teacher)
    drop_blocks(student, [2])
    return student, teacher


def per_row_kl(student, teacher, batch_positions: str, temperature: float) -> tuple[torch.Tensor, int]:
    """The KL summed over the positions that predict an answer token (or every next real token), row by row."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for example in EXAMPLES:
        ids = torch.tensor([example["input_ids"]])
        s, t = student(ids).logits[0], teacher(ids).logits[0]
        for position in range(len(example["input_ids"]) - 1):
            if batch_positions == "all" or example["labels"][position + 1] != -100:
                total += hand_kl(s[position], t[position], temperature)
                count += 1
    return total, count


@pytest.mark.parametrize("tokens", ["answer", "all"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_distillation_loss_equals_a_hand_computed_kl(tokens, alpha):
    student, teacher = student_and_teacher()
    batch = SFTCollator(tiny_tokenizer().pad_token_id, all_positions=tokens == "all")(EXAMPLES)
    distiller = Distiller(teacher, alpha, temperature=2.0, tokens=tokens, hidden_weight=0.0)
    with torch.no_grad():
        outputs = student(**batch)
        loss = distiller.loss(batch, outputs.loss, outputs.logits, [], None, accumulation=1, world=1)
        kl, count = per_row_kl(student, teacher, tokens, 2.0)
    assert count == (3 if tokens == "answer" else 7)
    expected = alpha * outputs.loss.double() + (1 - alpha) * kl / count
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_a_student_identical_to_its_teacher_gets_no_distillation_loss_or_gradient():
    teacher = build_tiny("qwen2").eval()
    student = copy.deepcopy(teacher).train()
    batch = SFTCollator(tiny_tokenizer().pad_token_id, all_positions=True)(EXAMPLES)
    distiller = Distiller(teacher, alpha=0.0, temperature=1.5, tokens="all", hidden_weight=1.0,
                          pairs=block_pairs(student, teacher))
    with block_outputs(student) as states:
        outputs = student(**batch)
    loss = distiller.loss(batch, outputs.loss, outputs.logits, states, None, accumulation=1, world=1)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-5
    assert max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None) < 1e-4


def test_a_bfloat16_teacher_gives_the_float32_teachers_loss_within_bfloat16_precision():
    """``distill.teacher_dtype: bfloat16`` runs only the teacher's forward in bfloat16 (the student and the KL stay
    float32): the loss moves by bfloat16's rounding of the teacher's logits, not more."""
    student, teacher = student_and_teacher()
    batch = SFTCollator(tiny_tokenizer().pad_token_id, all_positions=True)(EXAMPLES)
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        distiller = Distiller(copy.deepcopy(teacher).to(dtype), 0.0, temperature=1.0, tokens="all", hidden_weight=0.5,
                              pairs=block_pairs(student, teacher))
        with torch.no_grad(), block_outputs(student) as states:
            outputs = student(**batch)
            losses[dtype] = distiller.loss(batch, outputs.loss, outputs.logits, states, None, accumulation=1, world=1)
    assert losses[torch.bfloat16].dtype == torch.float32
    assert float(losses[torch.bfloat16]) != float(losses[torch.float32])  # the teacher did run in bfloat16
    torch.testing.assert_close(losses[torch.bfloat16], losses[torch.float32], rtol=0.05, atol=1e-3)


def test_hidden_pairs_follow_original_indices_after_removals():
    student, teacher = student_and_teacher()
    drop_blocks(student, [4])
    assert block_pairs(student, teacher) == [(0, 0), (1, 1), (2, 3), (3, 5)]  # blocks 2 and 4 removed


def test_teacher_with_another_vocabulary_is_refused(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=120, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, num_hidden_layers=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "other")
    tiny_tokenizer().save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="vocabulary of 120 tokens"):
        load_teacher(tmp_path / "other", build_tiny("llama"), "auto")


@pytest.mark.parametrize("schedule", ["oneshot", "none"])
def test_stage0_teacher_needs_a_full_depth_stage_0(schedule):
    from tests.conftest import ROOT

    with pytest.raises(RecipeError, match="needs a full-depth stage 0"):
        load_recipe(ROOT / "recipes" / "smoke.yaml", ["distill={}", f"schedule={schedule}",
                                                      "stop.target_fraction=0.2"])


def test_fixed_order_only_with_progressive():
    from tests.conftest import ROOT

    with pytest.raises(RecipeError, match="schedule 'trimllm' does not take option 'order'"):
        load_recipe(ROOT / "recipes" / "smoke.yaml", ["schedule=trimllm", "schedule.options.order=fixed"])


def test_progressive_removes_in_a_fixed_order_unless_told_to_rescore():
    """The study v2 default: progressive scores once; re-scoring stays available; the other schedules keep the
    only order they have, so their saved runs resume unchanged (tests/integration/test_resume.py)."""
    from tests.conftest import ROOT

    smoke = ROOT / "recipes" / "smoke.yaml"
    assert load_recipe(smoke).schedule.options["order"] == "fixed"  # smoke.yaml: progressive, no order given
    assert load_recipe(smoke, ["schedule.options.order=rescore"]).schedule.options["order"] == "rescore"
    for schedule in ("trimllm", "oneshot", "tuned_oneshot", "none"):  # no order to choose: none in their options
        assert "order" not in load_recipe(smoke, [f"schedule={schedule}"]).schedule.options


@pytest.mark.parametrize("overrides, message", [
    (["distill.tokens=0"], "must be answer, all, or a number N > 0"),
    (["distill.cache_k=8", "distill.temperature=2"], "caches the teacher's probabilities at temperature 1"),
    (["distill.cache_k=8", "distill.hidden_weight=0.5"], "set distill.cache_k=0 to run the teacher live"),
])
def test_distillation_options_that_cannot_work_are_refused(overrides, message):
    from tests.conftest import ROOT

    with pytest.raises(RecipeError, match=message):
        load_recipe(ROOT / "recipes" / "smoke.yaml", ["distill={}", *overrides])
    load_recipe(ROOT / "recipes" / "smoke.yaml", ["distill={}", "distill.tokens=16", "distill.cache_k=8"])


def test_a_stage0_teacher_needs_a_schedule_that_trains_one_except_under_compress():
    """The shipped recipes run ``oneshot`` (study v3), which trains no full-depth stage 0: ``trimllm train`` refuses
    a ``stage0`` teacher with the fix, while ``trimllm compress`` does not run the recipe's schedule (its healings
    distil from its full-depth reference) and takes the same recipe."""
    from tests.conftest import ROOT

    finance = ROOT / "recipes" / "finance.yaml"
    with pytest.raises(RecipeError, match="distill.teacher = stage0 needs a full-depth stage 0, which schedule "
                                          "'oneshot' does not train; set distill.teacher to a model path"):
        load_recipe(finance, ["distill={}"])
    assert load_recipe(finance, ["distill={}"], job="compress").distill.teacher == "stage0"
    with pytest.raises(RecipeError, match="distill.tokens"):  # the section's own values are checked either way
        load_recipe(finance, ["distill={}", "distill.tokens=0"], job="compress")
