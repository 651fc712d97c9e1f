"""`trimllm eval` end to end on a tiny model: every group, every output file."""

from __future__ import annotations

import json

import pytest
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
