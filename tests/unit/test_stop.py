"""Stop rules and the run file, without training anything: budgets in blocks and halves, the parameter target,
the accuracy floor, the final choice, and one serialisation of the stage records."""

from __future__ import annotations

import json

import pytest

from trimllm.config import StopConfig
from trimllm.plan import Plan
from trimllm.records import RUN_FILE, FinalChoice, RunFile, StagePlan, StageRecord
from trimllm.stop import below_floor, budget, choose_final, is_last, target_reached, units


def plan(dropped=(), attn=(), mlp=(), layers=10) -> Plan:
    return Plan(base_model="m", model_type="llama", num_layers=layers, params_original=1000,
                kept=[i for i in range(layers) if i not in dropped], dropped=list(dropped),
                bypassed_attention=list(attn), bypassed_mlp=list(mlp))


def record(stage: int, val_acc: float, params: int, last: bool = False) -> StageRecord:
    return StageRecord(stage=stage, scorer=None, scores={}, dropped=[], removed=[], frozen=[], blocks_kept=10 - stage,
                       params=params, val_acc=val_acc, seconds={"scoring": 0, "training": 1, "evaluation": 0},
                       tokens={"real": 5, "padded": 6}, peak_memory_mb=1.0, dir=f"stage_{stage:02d}", last=last)


def test_units_count_blocks_or_halves():
    assert units(plan(dropped=[1, 2]), "block") == (2, 10)
    assert units(plan(dropped=[1], attn=[3], mlp=[4, 5]), "sublayer") == (2 + 1 + 2, 20)


@pytest.mark.parametrize(
    "stop, structure, granularity, expected",
    [
        (StopConfig(target_fraction=0.5), plan(dropped=[1, 2]), "block", 3),  # 5 of 10, 2 removed
        (StopConfig(target_fraction=0.5, max_modules=3), plan(dropped=[1, 2]), "block", 1),  # the tighter limit
        (StopConfig(target_fraction=0.25), plan(dropped=[1], attn=[2]), "sublayer", 2),  # 5 of 20 halves, 3 used
        (StopConfig(target_fraction=None, target_params_fraction=0.3), plan(), "block", 9),  # keep one block
        (StopConfig(target_fraction=0.9), plan(dropped=list(range(9))), "block", 0),  # nothing left to remove
    ],
)
def test_budget(stop, structure, granularity, expected):
    assert budget(structure, stop, granularity) == expected


def test_parameter_target_and_floor():
    stop = StopConfig(target_fraction=None, target_params_fraction=0.3)
    assert not target_reached(plan(), 800, stop, "block") and target_reached(plan(), 700, stop, "block")
    assert below_floor([record(0, 0.8, 1000), record(1, 0.7, 900)], 0.9)  # 0.7 < 0.9 * 0.8
    assert not below_floor([record(0, 0.8, 1000), record(1, 0.75, 900)], 0.9)
    assert not below_floor([record(0, 0.8, 1000)], 0.9)  # stage 0 is the reference
    assert is_last([record(0, 0.8, 1000)], plan(), 1000, StopConfig(target_fraction=0.5), "block", decided_last=True)


def test_final_is_the_smallest_stage_that_meets_the_floor():
    stages = [record(0, 0.80, 1000), record(1, 0.79, 900), record(2, 0.60, 800), record(3, 0.78, 700)]
    assert choose_final(stages, floor=0.95).stage == 3  # 0.78 >= 0.76, and the smallest
    assert choose_final(stages, floor=0.99).stage == 0  # only stage 0 itself
    assert choose_final(stages, floor=None).stage == 3  # no floor: the last stage
    assert choose_final(stages[:3], floor=0.95) == FinalChoice(1, "stage_01", 0.79, 0.95, 0.80)


def test_max_drop_is_a_floor_in_points():
    stages = [record(0, 0.80, 1000), record(1, 0.79, 900), record(2, 0.60, 800), record(3, 0.785, 700)]
    assert choose_final(stages, floor=None, max_drop=1.5).stage == 3  # 78.5 >= 80 - 1.5
    assert choose_final(stages, floor=None, max_drop=1.0).stage == 1  # 79 >= 79; 78.5 < 79
    assert choose_final(stages, floor=0.99, max_drop=5.0).stage == 0  # the higher of the two bounds: 0.792
    assert below_floor(stages[:3], None, 10.0) and not below_floor(stages[:2], None, 1.0)


def test_run_file_round_trip(tmp_path):
    run = RunFile({"output_dir": "x"}, "m", 10, 1000, [record(0, 0.8, 1000)],
                  StagePlan(1, ["block.3"], last=False, scorer="depth", scores={"block.3": 0.1}, frozen=[2]),
                  None)
    run.write(tmp_path)
    data = json.loads((tmp_path / RUN_FILE).read_text())
    assert data["stages"][0]["tokens"] == {"real": 5, "padded": 6} and data["running"]["dropped"] == ["block.3"]
    assert RunFile.read(tmp_path) == run
    run.final = choose_final(run.stages, None)
    assert run.to_dict()["final"]["from"] == "stage_00" and "running" not in run.to_dict()
    run.write(tmp_path)
    assert RunFile.read(tmp_path).final == run.final


def test_expected_stages_counts_stage_0_and_the_removal_stages():
    from trimllm.config import StopConfig
    from trimllm.plan import Plan
    from trimllm.stop import expected_stages

    fresh = Plan("m", "llama", 30)
    assert expected_stages("progressive", 2, fresh, StopConfig(target_fraction=0.14), "block", 0) == 3  # 4 blocks
    assert expected_stages("progressive", 5, fresh, StopConfig(target_fraction=0.5), "block", 0) == 4  # 15 blocks
    assert expected_stages("trimllm", 1, fresh, StopConfig(target_fraction=0.1), "sublayer", 0) == 7  # 6 halves
    assert expected_stages("oneshot", 1, fresh, StopConfig(target_fraction=0.5), "block", 0) == 1
    assert expected_stages("progressive", 1, fresh, StopConfig(target_fraction=None, accuracy_floor=0.9), "block", 0) is None
    resumed = Plan("m", "llama", 30, dropped=[3, 4])  # after stage 1 of a 2-per-stage run
    assert expected_stages("progressive", 2, resumed, StopConfig(target_fraction=0.14), "block", 2) == 3


def test_progress_line_and_log_line():
    from trimllm.report import progress_line
    from trimllm.training import log_line

    assert progress_line(1, 4, 90.0) == "1 of ~4 stages done | elapsed 0:01:30 | ETA ~0:04:30"
    assert progress_line(4, 4, 3725.0) == "4 stages done | elapsed 1:02:05"
    assert progress_line(2, None, 10.0) == "2 stages done | elapsed 0:00:10"
    line = log_line(1, 30, 94, {"loss": 0.91374, "learning_rate": 0.00017581, "epoch": 0.3191, "total_flos": 5.0})
    assert line == "stage 1 | step 30/94 | loss 0.9137 | learning_rate 0.0001758 | epoch 0.3191"
