"""`trimllm eval` end to end on a tiny model: every group, every output file."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import build_tiny, flat, tiny_tokenizer
from trimllm.cli import app
from trimllm.evaluation import evaluate, results_table, task_groups
from trimllm.surgery import drop_blocks

pytestmark = pytest.mark.integration


def test_eval_cli_runs_every_group_and_writes_results(tmp_path):
    model = build_tiny("qwen3")
    drop_blocks(model, [0])
    from trimllm.export import save_compressed

    save_compressed(model, tiny_tokenizer(), tmp_path / "m")
    out = tmp_path / "eval"
    args = ["eval", str(tmp_path / "m"), "--tasks", "science,medical,finance,legal,general", "--limit", "2",
            "--batch-size", "4", "--out", str(out), "--log-samples"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    tasks = [t for members in task_groups().values() for t in members]
    for task in tasks:
        assert 0.0 <= summary["results"][task]["acc,none"] <= 1.0
        assert summary["n-samples"][task]["effective"] == 2
        lines = (out / f"samples_{task}.jsonl").read_text().splitlines()
        assert len(lines) == 2 and "resps" in json.loads(lines[0])
    table = (out / "results.md").read_text()
    assert "5 of 6 blocks" in table
    for domain in ("science", "medical", "finance", "legal", "general"):
        assert f"| {domain} |" in table


def test_evaluate_takes_an_in_memory_model():
    model = build_tiny("gemma3_text")
    drop_blocks(model, [1, 2])
    results = evaluate(model, tiny_tokenizer(), ["fpb"], limit=3, batch_size=2)
    assert set(results["results"]) == {"trimllm_fpb"}
    assert "4 of 6 blocks" in results_table(results, model)


def test_eval_rejects_unknown_tasks_before_loading_the_model():
    result = CliRunner().invoke(app, ["eval", "no-such-model", "--tasks", "scienc"])
    assert result.exit_code == 2 and "Did you mean 'science'" in flat(result.output)


@pytest.mark.parametrize("task, name", [("financial_phrasebank", "trimllm_fpb"), ("sciq", "trimllm_sciq")])
def test_packed_scorer_gives_lm_evals_per_document_loglikelihoods(task, name):
    """trimllm's packed multiple-choice scorer (one forward per document) against lm-eval's own HFLM (one forward
    per choice) on the same model and test documents: the same log-likelihood per choice, so the same prediction
    per document; the study may then score the whole test side with the packed scorer."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from trimllm.data import load_side
    from trimllm.multiple_choice import mc_correct, mc_logliks
    from trimllm.prompts import TASKS_DIR, mc_item

    model, tokenizer, n = build_tiny("qwen2"), tiny_tokenizer(), 12
    drop_blocks(model, [2])
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=4096)  # no cut: documents whole
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    results = simple_evaluate(model=lm, tasks=[name], task_manager=manager, limit=n, log_samples=True,
                              bootstrap_iters=0)
    samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
    reference = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    items = [mc_item(task, record) for record in load_side(task, "test")[:n]]
    assert [s["doc"]["_uid"] for s in samples] == [item.uid for item in items]  # the same documents, in order
    ours = mc_logliks(model, tokenizer, items, batch_size=3, max_length=4096)
    assert torch.allclose(torch.tensor(ours), torch.tensor(reference), atol=1e-3)
    assert mc_correct(model, tokenizer, items, 3, 4096) == [bool(s["acc"]) for s in samples]
