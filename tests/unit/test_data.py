"""Deterministic, leak-free splits of the bundled data."""

from __future__ import annotations

import pytest

from trimllm import data
from trimllm.data import DATASETS, DataNotFoundError, is_test_item, load_side, read_jsonl, train_side_splits


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_train_and_test_sides_are_disjoint(name):
    train = {r["_uid"] for r in load_side(name, "train")}
    test = {r["_uid"] for r in load_side(name, "test")}
    assert test, f"{name} has no test side"
    assert not train & test


@pytest.mark.parametrize("name, fraction", [("financial_phrasebank", 0.2), ("medmcqa", 0.5)])
def test_carved_splits_have_the_documented_size(name, fraction):
    total = len(read_jsonl(name, DATASETS[name].carve[0]))
    test = len(load_side(name, "test"))
    assert abs(test / total - fraction) < 0.03


def test_test_membership_depends_on_content_only():
    record = {"sentence": "Profits rose.", "label": "positive"}
    assert is_test_item(record, 0.2) == is_test_item(dict(reversed(list(record.items()))), 0.2)
    flags = {is_test_item({"sentence": f"s{i}"}, 0.2) for i in range(200)}
    assert flags == {True, False}


def test_train_side_splits_are_disjoint_seeded_and_exclude_test():
    splits = train_side_splits("sciq", n_validation=50, n_calibration=32, seed=3, n_train=200)
    ids = {k: {r["_uid"] for r in v} for k, v in splits.items()}
    assert [len(ids[k]) for k in ("train", "validation", "calibration")] == [200, 50, 32]
    assert not ids["train"] & ids["validation"] and not ids["calibration"] & (ids["train"] | ids["validation"])
    test = {r["_uid"] for r in load_side("sciq", "test")}
    assert not test & (ids["train"] | ids["validation"] | ids["calibration"])
    again = train_side_splits("sciq", n_validation=50, n_calibration=32, seed=3, n_train=200)
    assert [r["_uid"] for r in again["calibration"]] == [r["_uid"] for r in splits["calibration"]]
    other = train_side_splits("sciq", n_validation=50, n_calibration=32, seed=4, n_train=200)
    assert [r["_uid"] for r in other["calibration"]] != [r["_uid"] for r in splits["calibration"]]


def test_too_small_train_side_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than"):
        train_side_splits("pubmedqa", n_validation=400, n_calibration=200)
    with pytest.raises(ValueError, match="fewer than"):
        train_side_splits("medqa_usmle", n_validation=1, n_calibration=1)


def test_missing_data_names_the_path_and_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("TRIMLLM_DATA_DIR", str(tmp_path))
    data._sides.cache_clear()
    with pytest.raises(DataNotFoundError) as err:
        load_side("sciq", "test")
    assert f"{tmp_path / 'sciq'}/" in str(err.value) and "TRIMLLM_DATA_DIR" in str(err.value)
    data._sides.cache_clear()


def test_unknown_dataset_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'sciq'"):
        load_side("scik", "test")
