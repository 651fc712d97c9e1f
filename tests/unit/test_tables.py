"""Every markdown table trimllm writes has as many cells in each row as its header: the benchmark tables
(rendered from the figures in benchmarks/), `trimllm bench`'s table, report.md's stage table, the score and
evaluation tables, and the tables of the docs."""

from __future__ import annotations

import json
import re
import runpy

import pytest

from tests.conftest import ROOT
from trimllm.bench import table
from trimllm.config import Recipe
from trimllm.evaluation import results_table
from trimllm.report import ranked_table, stage_report
from trimllm.scoring import ScoreResult


def misshapen_rows(markdown: str) -> list[str]:
    """Rows whose cell count differs from their table's header (pipes inside `code` do not separate cells)."""
    lines, bad = markdown.splitlines(), []
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.fullmatch(r"\|[\s:|-]+\|?", lines[i + 1]) and (i == 0 or not lines[i - 1].startswith("|")):
            width = _cells(line)
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                if _cells(row) != width:
                    bad.append(f"{_cells(row)} cells under {width}: {row}")
    return bad


def _cells(row: str) -> int:
    return re.sub(r"`[^`]*`", "x", row).strip().strip("|").count("|") + 1


def test_the_checker_catches_a_short_row():
    assert misshapen_rows("| a | b | c |\n|---|---|---|\n| 1 | 2 |\n") != []
    assert misshapen_rows("| a | b |\n|---|---|\n| `x|y` | 2 |\n") == []


def bench_results() -> dict:
    row = {"params": 134_515_008, "blocks": 30, "peak_memory_bytes": 2**30, "prefill_b1": 900.0, "prefill_b8": 1200.0,
           "decode_b1": 30.1, "bound": 1.0, "decode_speedup": 1.0, "prefill_speedup": 1.0, "prefill_b1_speedup": 1.0,
           "prefill_b8_speedup": 1.0, "memory_ratio": 1.0, "decode_vs_bound": 1.0, "prefill_vs_bound": 1.0}
    return {"setup": {"batches": [1, 8]}, "models": {"smollm2-135m": row, "/tmp/x/smollm2-25": {**row, "blocks": 25}}}


def test_trimllm_bench_table():
    text = table(bench_results())
    assert misshapen_rows(text) == [] and "| `smollm2-25` | 25 | 134.5M | 900.0 |" in text


def test_report_score_and_evaluation_tables():
    stage = {"stage": 0, "dropped": [], "blocks_kept": 30, "params": 10, "val_acc": 0.5,
             "seconds": {"scoring": 1, "training": 2, "evaluation": 3}, "tokens": {"real": 9, "padded": 10},
             "peak_memory_mb": 100.0}

    final = {"stage": 0, "floor": None, "reference_val_acc": 0.5}
    assert misshapen_rows(stage_report([stage], final, Recipe())) == []
    assert misshapen_rows(ranked_table([ScoreResult("depth", {"block.0": 1.0, "block.1": 0.0})])) == []
    results = {"results": {"trimllm_sciq": {"acc,none": 0.5, "acc_stderr,none": 0.1}}, "n-samples": {}, "groups": {}}
    assert misshapen_rows(results_table(results)) == []


@pytest.mark.parametrize("script, figures, options", [
    ("bench_inference.py", "inference.json", {}), ("bench_inference.py", "inference_cuda.json", {}),
    ("bench_scan.py", "scan.json", {}), ("bench_train.py", "train.json", {"render": "markdown"}),
    ("bench_train.py", "train.json", {"render": "grouping_markdown"}), ("study_v1.py", "study.json", {}),
    ("study_v1.py", "study_cuda.json", {}), ("bench_distill.py", "train.json", {"render": "distillation_markdown"}),
    ("bench_bridge.py", "bridge.json", {}),
    ("study.py", "study_v2.json", {}),
])
def test_benchmark_tables_rendered_from_their_figures(script, figures, options):
    render = runpy.run_path(str(ROOT / "scripts" / script))[options.get("render", "markdown")]
    assert misshapen_rows(render(json.loads((ROOT / "benchmarks" / figures).read_text()))) == []


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md", "eval/BASELINES.md"])
def test_docs(doc):
    assert misshapen_rows((ROOT / doc).read_text()) == []
