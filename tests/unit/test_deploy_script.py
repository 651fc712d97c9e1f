"""scripts/bench_deploy.py's reading of its rows: the bound at f16, depth and q4_k_m composed, and the smallest /
fastest variant within 1 point of the original q4_k_m."""

from __future__ import annotations

import runpy

from tests.conftest import ROOT

deploy = runpy.run_path(str(ROOT / "scripts" / "bench_deploy.py"))


def row(params, size, decode, speedup, bound):
    return {"params": params, "file_bytes": size, "peak_memory_bytes": size, "prefill_tok_s": 1.0,
            "decode_tok_s": decode, "decode_speedup": speedup, "bound": bound, "decode_vs_bound": round(speedup / bound, 3)}


def figures():
    rows = {"original f16": row(100, 200, 10.0, 1.0, 1.0), "original q4_k_m": row(100, 60, 15.0, 1.5, 1.0),
            "trimmed t f16": row(75, 150, 13.0, 1.3, 1.333), "trimmed t q4_k_m": row(75, 45, 17.0, 1.7, 1.333)}
    acc = {"original f16": 0.80, "original q4_k_m": 0.79, "trimmed t f16": 0.785, "trimmed t q4_k_m": 0.70}
    accuracy = {k: {"acc": v, "acc_stderr": 0.01, "n_test": 4, "correct": [True, True, False, v > 0.75]}
                for k, v in acc.items()}
    setup = {"runtime": "llama.cpp", "threads": 2, "prompt_len": 8, "new_tokens": 4, "repeats": 1}
    return {"speed": {"models": rows, "setup": setup}, "accuracy": accuracy, "task": "sciq", "original": "o",
            "command": "python scripts/bench_deploy.py"}


def test_summary_reads_the_targets_and_picks_the_variants():
    f = figures()
    s = deploy["summary"](f)
    t = s["trimmed"]["trimmed t"]
    assert t["f16_decode_vs_bound"] == 0.975  # 1.3 / 1.333
    assert t["q4_expected"] == round(1.333 * 1.5, 3) and t["q4_vs_composed"] == round(1.7 / (1.333 * 1.5), 3) == 0.85
    # within 1 point of the original q4_k_m (0.79): everything but the trimmed q4_k_m (0.70)
    assert s["within_1_point_of_original_q4"] == ["original f16", "original q4_k_m", "trimmed t f16"]
    assert s["smallest"] == "original q4_k_m" and s["fastest"] == "original q4_k_m"
    f["summary"] = s
    text = deploy["markdown"](f)
    assert "target >= 0.95: met" in text and "the two compose: not met" in text  # 0.975 >= 0.95; 0.85 < 0.9
    assert "smallest `original q4_k_m`, fastest `original q4_k_m`" in text
