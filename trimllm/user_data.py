"""Your own data set: records read through ``datasets`` from a recipe's ``data.source``, and its two sides.

A source is a JSON Lines / JSON / CSV / Parquet file, a folder of such files, or a ``datasets`` hub id. The train
side and the test side come either from ``data.splits`` (files, or split names of the source) or, as for the bundled
sets without a shipped test split, by carving: a record is a test item when the salted hash of its content falls
below ``data.test_fraction`` (:func:`trimllm.data.is_test_item`, the same function, so the same record is always on
the same side). ``process_docs`` (lm-eval's hook: ``datasets.Dataset -> datasets.Dataset``) runs first, so a nested
record (TAT-QA: one table, many questions) becomes flat records before the split. A record found on both sides of a
user's own split files is refused: it would be trained on and then tested.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from trimllm.data import DATA_ENV, DataFormatError, DataNotFoundError, data_dir, is_test_item, record_uid

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FORMATS = ("multiple_choice", "completion", "text")


@dataclass(frozen=True)
class UserSides:
    """A user data set's records (each with ``_uid``): the train side, the test side, and a validation split when
    the user gave one (else validation is drawn from the train side, as for the bundled sets)."""

    train: tuple[dict, ...]
    test: tuple[dict, ...]
    validation: tuple[dict, ...] | None = None


def expand(path: str) -> str:
    """``$VAR`` / ``${VAR}`` and ``~`` expanded; ``$TRIMLLM_DATA_DIR`` defaults to the bundled data folder."""
    env = {DATA_ENV: str(data_dir()), **os.environ}
    text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), path)
    return os.path.expanduser(text)


def task_name(cfg) -> str:
    """The data set's name: ``data.name``, else the source's file stem (``reviews.jsonl`` -> ``reviews``)."""
    if cfg.name:
        return cfg.name
    stem = Path(expand(cfg.source).rstrip("/")).name.split(".")[0]
    return re.sub(r"\W+", "_", stem).strip("_").lower() or "user_data"


def user_sides(cfg) -> UserSides:
    """Both sides of the user data set of ``cfg`` (a :class:`trimllm.config.DataConfig`)."""
    key = json.dumps([cfg.source, cfg.splits, cfg.test_fraction, cfg.process_docs, str(Path.cwd()),
                      os.environ.get(DATA_ENV), _file_stamps(cfg)], sort_keys=True, default=str)
    return _sides(key)


def _file_stamps(cfg) -> list:
    """Size and modification time of every local file behind ``cfg``'s data: part of the cache key, so that a file
    edited while the process lives (a script calling trimllm.train twice) is read again, not served from memory."""
    paths = [cfg.source, *(cfg.splits or {}).values(), (cfg.process_docs or "").rpartition(":")[0]]
    stamps = []
    for text in filter(None, map(str, paths)):
        path = Path(expand(text))
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        stamps += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return stamps


@lru_cache(maxsize=8)
def _sides(key: str) -> UserSides:
    source, splits, test_fraction, process_docs, *_ = json.loads(key)
    splits = splits or {}
    unknown = set(splits) - {"train", "validation", "test"}
    if unknown:
        raise DataFormatError(f"data.splits has {sorted(unknown)}; expected the keys train, test and validation")

    def read(which: str) -> list[dict]:
        records = read_records(source, splits.get(which), f"data.splits.{which}" if which in splits else "data.source")
        return _with_uids(_processed(records, process_docs))

    train = read("train")
    if "test" in splits:
        test = read("test")
        _refuse_overlap(train, test)
    else:  # carve by content hash, as the bundled sets without a shipped test split (the same record, same side)
        on_test = [is_test_item(content(r), test_fraction) for r in train]
        train, test = ([r for r, t in zip(train, on_test, strict=True) if not t],
                       [r for r, t in zip(train, on_test, strict=True) if t])
    validation = read("validation") if "validation" in splits else None
    if validation is not None:  # validation picks final/ and drives the accuracy floor: never on trained records
        _refuse_overlap(validation, test, ("validation", "test"))
        _refuse_overlap(train, validation, ("train", "validation"))
    return UserSides(tuple(train), tuple(test), None if validation is None else tuple(validation))


def read_records(source: str, split: str | None, key: str):
    """The records of ``split`` (a file, or a split name of the source), else of the whole source, as a
    ``datasets.Dataset`` (its types kept for ``process_docs``: TAT-QA's answers mix strings, lists and numbers)."""
    if split is not None:
        path = Path(expand(str(split)))
        if path.exists():
            return _read_path(path)
        folder = Path(expand(source))
        named = [f for f in sorted(folder.glob(f"{split}.*")) if f.suffix in BUILDERS] if folder.is_dir() else []
        if named:
            return _read_path(named[0])
        if folder.exists() or _looks_like_path(source):
            raise DataNotFoundError(f"{key} = {split!r}: no such file, and no file {split}.jsonl / .csv / .parquet "
                                    f"in {folder}; give a file path or the name of a split file of data.source")
        return _read_hub(source, split)
    path = Path(expand(source))
    if path.exists():
        return _read_path(path)
    if _looks_like_path(source):
        raise DataNotFoundError(f"data.source = {source!r}: {path} does not exist (relative paths are read from the "
                                f"working directory, {Path.cwd()}); give a .jsonl, .json, .csv or .parquet file or a "
                                "folder of them")
    return _read_hub(source, "train")


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~", "$")) or Path(source).suffix in BUILDERS or source.count("/") > 1


def _read_path(path: Path):
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.suffix in BUILDERS)
    builders = {BUILDERS.get(f.suffix) for f in files}
    if not files or None in builders:
        raise DataFormatError(f"{path}: expected a .jsonl, .json, .csv or .parquet file, or a folder of them")
    if len(builders) > 1:
        raise DataFormatError(f"{path} mixes file types ({', '.join(sorted(f.suffix for f in files))}); keep one")
    import datasets

    datasets.disable_progress_bars()  # one small local file: a progress bar per split is noise
    builder = builders.pop()
    if builder in ("json", "csv"):
        for file in files:
            _check_utf8(file)
    # CSV: pandas reads "NA", "null", "N/A", ... as missing, so a completion target "NA" would train as " None".
    # Only an empty cell is missing (and refused where a template reads it); every other text stays text.
    options = {"keep_default_na": False, "na_values": [""]} if builder == "csv" else {}
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **options)
    except Exception as err:  # datasets raises many types for a file it cannot parse
        raise DataFormatError(f"{path}: cannot be read as {files[0].suffix} records: {_cause(err)}") from None


def _check_utf8(path: Path) -> None:
    """Refuse a text file that is not UTF-8, naming the line (datasets would read it and fail later, in pyarrow)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataFormatError(f"{path}, line {number}: not UTF-8 ({err.reason} at byte {err.start}); "
                                      "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None


def _read_hub(source: str, split: str):
    from trimllm.modeling import hub_offline

    if hub_offline():
        raise DataNotFoundError(f"data.source = {source!r} is no file or folder here, and the Hugging Face hub cannot "
                                "be reached (offline) to load it as a datasets id; give a local file or folder")
    import datasets

    try:
        return datasets.load_dataset(source, split=split)
    except Exception as err:
        raise DataNotFoundError(f"data.source = {source!r}: datasets could not load split {split!r}: "
                                f"{_cause(err)}") from None


def _cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _processed(dataset, process_docs: str | None) -> list[dict]:
    """The records, after ``process_docs`` (lm-eval's contract: ``datasets.Dataset -> datasets.Dataset``)."""
    if process_docs:
        function = load_function(process_docs)
        rows = dataset.num_rows
        try:
            dataset = function(dataset)
        except (Exception, SystemExit) as err:  # the user's code: say whose, and what it raised (sys.exit too)
            raise DataFormatError(f"data.process_docs = {process_docs!r} failed on {rows} records: "
                                  f"{type(err).__name__}: {err}") from None
        if not hasattr(dataset, "to_list") and not isinstance(dataset, list | tuple):
            raise DataFormatError(f"data.process_docs = {process_docs!r} returned {type(dataset).__name__}; it must "
                                  "return the records (a datasets.Dataset, as lm-eval's hook does; forgot `return`?)")
    return dataset.to_list() if hasattr(dataset, "to_list") else [dict(r) for r in dataset]


def load_function(spec: str):
    """A function named ``module.function`` (importable) or ``path/to/file.py:function``."""
    if ":" in spec:
        file, _, name = spec.rpartition(":")
        path = Path(expand(file))
        if not path.is_file():
            raise DataNotFoundError(f"data.process_docs = {spec!r}: file {path} not found")
        module_spec = importlib.util.spec_from_file_location(f"trimllm_user_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as err:  # a syntax error, a missing import, a sys.exit at import
            where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
            raise DataFormatError(f"data.process_docs = {spec!r}: {path} failed to load{where}: "
                                  f"{type(err).__name__}: {err}") from None
    else:
        module_name, _, name = spec.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except (ImportError, ValueError, SyntaxError) as err:
            raise DataNotFoundError(f"data.process_docs = {spec!r}: cannot import {module_name!r} ({err}); give "
                                    "module.function on the Python path or path/to/file.py:function") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise DataNotFoundError(f"data.process_docs = {spec!r}: {module.__name__} has no function {name!r}")
    return function


def content(record: dict) -> dict:
    """A record as the user wrote it (without the ``_uid`` trimllm adds)."""
    return {k: v for k, v in record.items() if k != "_uid"}


def _with_uids(records: list[dict]) -> list[dict]:
    return [{**r, "_uid": record_uid(content(r))} for r in records]


def _refuse_overlap(first_side: list[dict], second_side: list[dict], names: tuple[str, str] = ("train", "test")) -> None:
    second_ids = {r["_uid"] for r in second_side}
    shared = [r for r in first_side if r["_uid"] in second_ids]
    if shared:
        first = json.dumps(content(shared[0]), ensure_ascii=False)[:200]
        raise DataFormatError(f"{len(shared)} record(s) are on both the {names[0]} side and the {names[1]} side of "
                              f"data.splits (the first: {first}); remove them from the {names[0]} file, or the model "
                              f"is {'trained' if names[0] == 'train' else 'validated'} on what it is "
                              f"{'validated' if names[1] == 'validation' else 'tested'} on")
