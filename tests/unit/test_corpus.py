"""``distill.corpus``: domain text beyond the task's examples (SciQ's support passages), distilled at every position.
The corpus is the text of train-side records that no run trains, validates or calibrates on, and never one that
``trimllm compress`` verifies on; its rows carry no label, widen no answer window, and a step made only of them has
a finite loss (KL only); the recipe checks refuse what cannot work before any model loads."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import ROOT, build_tiny, tiny_tokenizer
from trimllm.config import DataConfig, RecipeError
from trimllm.data import train_side_splits
from trimllm.distill import Distiller
from trimllm.formats import corpus_examples, held_out_records, unused_records
from trimllm.sft import SFTCollator
from trimllm.surgery import drop_blocks
from trimllm.validation import load_recipe

CFG = DataConfig(task="sciq", n_train=50, n_validation=8, n_calibration=4, max_length=64)


def test_the_corpus_is_the_support_of_records_no_run_trains_on_and_compress_never_verifies_on():
    tokenizer = tiny_tokenizer()
    unused = unused_records(CFG)
    corpus = corpus_examples(CFG, tokenizer, "support", 30)
    expected = [tokenizer(r["support"], add_special_tokens=False).input_ids[:64] for r in unused[-30:]]
    assert [e["input_ids"] for e in corpus] == [ids for ids in expected if len(ids) >= 2]
    assert 20 <= len(corpus) <= 30 and all(set(e["labels"]) == {-100} for e in corpus)  # some supports are empty
    drawn = train_side_splits("sciq", 8, 4, 0, 50)
    used = {r["_uid"] for side in drawn.values() for r in side}
    assert len(used) == 62 and not used & {r["_uid"] for r in unused}
    verified = held_out_records(CFG, 10**6, corpus_n=30)
    assert len(verified) == len(unused) - 30 and not {r["_uid"] for r in verified} & {r["_uid"] for r in unused[-30:]}
    assert held_out_records(CFG, 10) == unused[:10]  # without a corpus: the first unused, as before


def hand_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    p_t, p_s = torch.softmax(teacher.double(), -1), torch.softmax(student.double(), -1)
    return (p_t * (p_t.log() - p_s.log())).sum()


def test_a_corpus_row_is_distilled_at_every_position_and_adds_no_cross_entropy_target():
    teacher = build_tiny("llama").eval()
    student = copy.deepcopy(teacher)
    drop_blocks(student, [2])
    examples = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, -100, 8, 9]},
                {"input_ids": [20, 21, 22, 23, 24, 25, 26], "labels": [-100] * 7}]  # a corpus row: no label
    batch = SFTCollator(tiny_tokenizer().pad_token_id, all_positions=True)(examples)
    distiller = Distiller(teacher, 0.5, temperature=1.0, tokens="all", hidden_weight=0.0)
    with torch.no_grad():
        outputs = student(**batch)
        loss = distiller.loss(batch, outputs.loss, outputs.logits, [], None, accumulation=1, world=1)
        answer_only = student(**SFTCollator(0, all_positions=True)(examples[:1])).loss  # CE: the answer row's alone
        kl = [hand_kl(student(torch.tensor([e["input_ids"]])).logits[0, p], teacher(torch.tensor([e["input_ids"]])).logits[0, p])
              for e in examples for p in range(len(e["input_ids"]) - 1)]
    torch.testing.assert_close(outputs.loss, answer_only, rtol=1e-5, atol=1e-6)
    assert len(kl) == 4 + 6
    torch.testing.assert_close(loss.double(), 0.5 * outputs.loss.double() + 0.5 * sum(kl) / len(kl), rtol=1e-5, atol=1e-6)
    # the answer-window collator (distill.tokens: answer / N) takes a label-less row too
    assert SFTCollator(0)(examples)["logits_to_keep"] == 3


def test_a_step_of_corpus_rows_only_has_a_finite_loss(tmp_path):
    """No label in the whole accumulated batch (the Trainer counts 0 items): the CE part is 0, not 0 / 0."""
    from transformers import TrainingArguments

    from trimllm.training import StageTrainer

    teacher = build_tiny("llama").eval()
    student = copy.deepcopy(teacher)
    drop_blocks(student, [2])
    batch = SFTCollator(0, all_positions=True)([{"input_ids": [20, 21, 22, 23], "labels": [-100] * 4}])
    trainer = StageTrainer(model=student, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
                           distiller=Distiller(teacher, 0.5, 1.0, "all", 0.0))
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets before a step
    loss = trainer.compute_loss(student, batch, num_items_in_batch=torch.tensor(0))
    with torch.no_grad():
        kl = sum(hand_kl(student(batch["input_ids"]).logits[0, p], teacher(batch["input_ids"]).logits[0, p])
                 for p in range(3)) / 3
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.detach().double(), 0.5 * kl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["distill.tokens=answer"], "distill.corpus = 'support' is plain text, distilled at every position: it needs "
                                "distill.tokens = all \\(got 'answer'\\)"),
    (["distill.corpus=supports"], "the records it would read have no text field of that name \\(their fields: "
                                  "question, distractor1, .*\\); name one that holds domain text"),
    (["data.n_train=null"], "data.n_train = None leaves none: set data.n_train lower"),
])
def test_a_corpus_that_cannot_work_is_refused_before_any_model_loads(overrides, message):
    corpus = ["distill={}", "distill.teacher=base", "distill.tokens=all", "distill.corpus=support"]
    with pytest.raises(RecipeError, match=message):
        load_recipe(ROOT / "recipes" / "smoke.yaml", [*corpus, *overrides])
    assert load_recipe(ROOT / "recipes" / "smoke.yaml", corpus).distill.corpus_n == 2000
