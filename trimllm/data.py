"""The bundled data sets: where they live, and one deterministic split used by training, calibration and evaluation.

Data is read from ``$TRIMLLM_DATA_DIR``, else from the ``shared/data`` folder beside the repository. It is never
copied into the project.

Splits. A data set that ships a train/test pair keeps it. One that does not (Financial PhraseBank, the MedMCQA dev
set, the LegalBench test files) is divided by :func:`is_test_item`: a record belongs to the test side when a
SHA-256 hash of its canonical JSON content, salted with :data:`TEST_SPLIT_SALT`, falls below the data set's test
fraction. The salt is a constant, not a recipe option, so every run of every user sees the same test items; and
because the key is the record's content, duplicate records always land on the same side. Records that a shipped
train split shares with the test side (MMLU repeats a few test questions in dev / validation) are removed from the
train side. Training, validation and
calibration examples are then drawn from the train side only (:func:`train_side_splits`), so no test item is ever
trained on or used to choose what to drop.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from trimllm.errors import DataFormatError, DataNotFoundError  # noqa: F401  (raised here; re-exported)
from trimllm.registry import did_you_mean

DATA_ENV = "TRIMLLM_DATA_DIR"
TEST_SPLIT_SALT = "trimllm-test-split-v1"


@dataclass(frozen=True)
class DatasetSpec:
    """How one bundled data set maps to trimllm's train side and test side.

    Attributes:
        folder: folder under the data directory.
        test: shipped split files that make up the test side.
        train: shipped split files that make up the train side.
        carve: shipped splits divided by content hash; the share ``test_fraction`` goes to the test side and the
            rest to the train side.
        test_fraction: share of ``carve`` records that are test items.
        domain: science, medical, finance, legal or general.
    """

    folder: str
    test: tuple[str, ...] = ()
    train: tuple[str, ...] = ()
    carve: tuple[str, ...] = ()
    test_fraction: float = 0.0
    domain: str = "general"

    @property
    def general_only(self) -> bool:
        """A general-ability set with no train side: evaluation only, never trained or scored on."""
        return self.domain == "general" and not (self.train or self.carve)


DATASETS: dict[str, DatasetSpec] = {
    "sciq": DatasetSpec("sciq", test=("test",), train=("train", "validation"), domain="science"),
    "pubmedqa": DatasetSpec("pubmedqa", test=("test",), train=("train",), domain="medical"),
    "medmcqa": DatasetSpec("medmcqa", carve=("validation",), test_fraction=0.5, domain="medical"),
    "medqa_usmle": DatasetSpec("medqa_usmle", test=("test",), domain="medical"),
    "financial_phrasebank": DatasetSpec("financial_phrasebank", carve=("train",), test_fraction=0.2, domain="finance"),
    "legalbench": DatasetSpec("legalbench", train=("train",), carve=("test",), test_fraction=0.7, domain="legal"),
    "mmlu": DatasetSpec("mmlu", test=("test",), train=("dev", "validation")),
    "arc_easy": DatasetSpec("arc_easy", test=("test",), train=("train", "validation")),
    "arc_challenge": DatasetSpec("arc_challenge", test=("test",), train=("train", "validation")),
    # General-ability sets are evaluation only: their labelled split is the test side (as in lm-eval).
    "piqa": DatasetSpec("piqa", test=("validation",)),
    "hellaswag": DatasetSpec("hellaswag", test=("validation",)),
    "boolq": DatasetSpec("boolq", test=("validation",)),
    "winogrande": DatasetSpec("winogrande", test=("validation",)),
}


def data_dir() -> Path:
    """``$TRIMLLM_DATA_DIR``, else ``shared/data`` beside the repository checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(
            f"Unknown data set {name!r}.{did_you_mean(name, DATASETS)} Available: {', '.join(sorted(DATASETS))}."
        )
    return DATASETS[name]


def read_jsonl(name: str, split: str) -> list[dict]:
    """All records of one shipped split file, in file order."""
    path = data_dir() / get_spec(name).folder / f"{split}.jsonl"
    if not path.is_file():
        raise DataNotFoundError(
            f"Data file not found: {path}. trimllm reads the bundled data from ${DATA_ENV} "
            f"(now {os.environ.get(DATA_ENV, 'unset')}) or from shared/data beside the repository; set "
            f"{DATA_ENV} to the folder that holds {get_spec(name).folder}/."
        )
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}, line {number}: not a JSON object ({err.msg} at column {err.colno}); "
                                      "each line of a .jsonl file is one JSON record") from None
    return records


def record_uid(record: dict) -> str:
    """A stable id for a record: the hash of its canonical JSON content."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _unit_interval(key: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) / float(1 << 48)


def is_test_item(record: dict, test_fraction: float) -> bool:
    """Whether a record of a carved split belongs to the test side (fixed for everyone; see module doc)."""
    return _unit_interval(record_uid(record), TEST_SPLIT_SALT) < test_fraction


@lru_cache(maxsize=32)
def _sides(name: str, folder: Path) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """Both sides of ``name`` as read from ``folder`` (the data directory: part of the cache key)."""
    spec = get_spec(name)
    train, test = [], []
    for split in spec.train:
        train += read_jsonl(name, split)
    for split in spec.test:
        test += read_jsonl(name, split)
    for split in spec.carve:
        for record in read_jsonl(name, split):
            (test if is_test_item(record, spec.test_fraction) else train).append(record)
    test = [{**r, "_uid": record_uid(r)} for r in test]
    # Shipped splits can share items (MMLU's dev/validation repeat some test questions): a record that is on the
    # test side is never on the train side.
    test_ids = {r["_uid"] for r in test}
    train = [{**r, "_uid": uid} for r in train if (uid := record_uid(r)) not in test_ids]
    return tuple(train), tuple(test)


def load_side(name: str, side: str) -> list[dict]:
    """The ``train`` or ``test`` side of a data set; each record carries its ``_uid``."""
    if side not in ("train", "test"):
        raise ValueError(f"side must be 'train' or 'test', got {side!r}")
    train, test = _sides(name, data_dir())
    return [dict(r) for r in (train if side == "train" else test)]


def train_side_splits(
    name: str, n_validation: int, n_calibration: int, seed: int = 0, n_train: int | None = None
) -> dict[str, list[dict]]:
    """Divide the train side into disjoint ``train``, ``validation`` and ``calibration`` lists.

    The order is a seeded permutation (by hash, so it does not depend on file order); validation takes the first
    ``n_validation`` records, calibration the next ``n_calibration``, training the rest (or ``n_train`` of them).

    Raises:
        ValueError: the data set has no train side, or it is smaller than the sizes asked for.
    """
    return draw_splits(load_side(name, "train"), name, n_validation, n_calibration, seed, n_train)


def draw_splits(records: list[dict], name: str, n_validation: int, n_calibration: int, seed: int = 0,
                n_train: int | None = None) -> dict[str, list[dict]]:
    """:func:`train_side_splits` on a given train side (records carrying ``_uid``): a user data set's too."""
    records = sorted(records, key=lambda r: _unit_interval(r["_uid"], f"order-{seed}"))
    needed = n_validation + n_calibration + (n_train or 1)
    if len(records) < needed:
        raise ValueError(
            f"{name} has {len(records)} train-side records, fewer than the {needed} asked for "
            f"(validation {n_validation} + calibration {n_calibration} + train {n_train or 1})."
        )
    validation = records[:n_validation]
    calibration = records[n_validation : n_validation + n_calibration]
    train = records[n_validation + n_calibration :]
    return {"train": train[:n_train] if n_train else train, "validation": validation, "calibration": calibration}
