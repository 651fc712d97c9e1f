"""Your own data set (``data.source``): files of every type, lm-eval's rendering, splits, packing, validation."""

from __future__ import annotations

import json

import datasets
import pytest

from tests.conftest import ROOT, run_cli, tiny_tokenizer
from trimllm.config import DataConfig, RecipeError
from trimllm.data import DataFormatError, load_side
from trimllm.formats import text_blocks, training_data, user_items, write_task
from trimllm.sft import SFTCollator
from trimllm.user_data import expand, task_name, user_sides
from trimllm.validation import load_recipe

RECORDS = [{"question": f"What is {a} plus {b}?", "options": [str(a + b), str(a + b + 1), str(a * b + 7)],
            "answer": (a + b) % 3, "solution": f"{a + b}"} for a in range(12) for b in range(10)]
MC = dict(format="multiple_choice", doc_to_text="Q: {{question}}\nA:", doc_to_choice="{{options}}",
          doc_to_target="{{answer}}")


def write(path, records, kind):
    """``records`` as a .jsonl, .csv or .parquet file (csv: lists as JSON text; the template reads them back)."""
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        rows = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in records]
        dataset = datasets.Dataset.from_list(rows)
        dataset.to_csv(path, index=False) if kind == "csv" else dataset.to_parquet(path)
    return path


def data_config(source, **keys) -> DataConfig:
    return DataConfig(source=str(source), **{**MC, **keys})


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_every_file_type_gives_the_same_items(tmp_path, kind):
    """The same records as JSON Lines, CSV (lists as JSON text, which lm-eval's doc_to_choice reads as a list
    literal) or Parquet give the same prompts, choices and gold."""
    reference = user_items(data_config(tmp_path / "unused.jsonl"), RECORDS[:5])
    cfg = data_config(write(tmp_path / f"data.{kind}", RECORDS, kind))
    sides = user_sides(cfg)
    assert len(sides.train) + len(sides.test) == len(RECORDS)
    by_question = {r["question"]: r for r in [*sides.train, *sides.test]}
    items = user_items(cfg, [by_question[r["question"]] for r in RECORDS[:5]])
    assert [(i.context, i.choices, i.gold) for i in items] == [(i.context, i.choices, i.gold) for i in reference]
    assert len({i.gold for i in items}) > 1


def test_items_are_what_lm_eval_renders_from_the_written_task(tmp_path):
    """The task YAML trimllm writes, loaded by lm-eval's own TaskManager, renders every test document as trimllm
    trains and scores it: same prompt, same choices (with lm-eval's target delimiter), same gold."""
    from lm_eval.tasks import TaskManager

    cfg = data_config(write(tmp_path / "arith.jsonl", RECORDS, "jsonl"))
    write_task(cfg, tmp_path / "tasks")
    task = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False).load_task_or_group(["arith"])["arith"]
    docs = list(task.test_docs())
    ours = user_items(cfg, list(user_sides(cfg).test))
    assert len(docs) == len(ours) > 10
    for doc, item in zip(docs, ours, strict=True):
        requests = task.construct_requests(doc, task.fewshot_context(doc, 0))
        assert [r.arguments for r in requests] == [(item.context, choice) for choice in item.choices]
        assert task.doc_to_target(doc) == item.gold


def test_a_completion_target_is_appended_as_lm_eval_does(tmp_path):
    from lm_eval.tasks import TaskManager

    cfg = data_config(write(tmp_path / "sums.jsonl", RECORDS, "jsonl"), format="completion",
                      doc_to_target=" {{solution}}", doc_to_choice=None)
    write_task(cfg, tmp_path / "tasks")
    task = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False).load_task_or_group(["sums"])["sums"]
    doc = next(iter(task.test_docs()))
    item = user_items(cfg, [user_sides(cfg).test[0]])[0]
    assert task.construct_requests(doc, task.fewshot_context(doc, 0)).arguments == (item.context, item.choices[0])
    assert item.choices[0].startswith(" ") and item.gold == 0


def test_carving_a_bundled_file_gives_the_bundled_test_side():
    """The same hash function as the bundled sets: Financial PhraseBank read as a user's file carves the very
    test side that `data.task: financial_phrasebank` has."""
    cfg = DataConfig(source="${TRIMLLM_DATA_DIR}/financial_phrasebank/train.jsonl", format="multiple_choice",
                     test_fraction=0.2)
    assert [r["_uid"] for r in user_sides(cfg).test] == [r["_uid"] for r in load_side("financial_phrasebank", "test")]


def test_a_test_record_in_the_train_file_is_refused(tmp_path):
    write(tmp_path / "train.jsonl", RECORDS[:60] + [RECORDS[100]], "jsonl")
    write(tmp_path / "test.jsonl", RECORDS[100:], "jsonl")
    cfg = data_config(tmp_path, splits={"train": "train", "test": str(tmp_path / "test.jsonl")})
    with pytest.raises(DataFormatError, match="1 record.*both the train side and the test side"):
        user_sides(cfg)


def test_split_names_of_a_folder_and_an_own_validation_split(tmp_path):
    write(tmp_path / "train.jsonl", RECORDS[:80], "jsonl")
    write(tmp_path / "dev.jsonl", RECORDS[80:100], "jsonl")
    write(tmp_path / "test.jsonl", RECORDS[100:], "jsonl")
    cfg = data_config(tmp_path, splits={"train": "train", "validation": "dev", "test": "test"}, n_validation=15,
                      n_calibration=4, n_train=None)
    data = training_data(cfg, tiny_tokenizer())
    assert len(user_sides(cfg).test) == 20
    assert [i.context for i in data.validation] == [i.context for i in user_items(cfg, list(user_sides(cfg).validation[:15]))]
    assert len(data.examples) == 80 - 4 and len(data.calibration) == 4 and data.metric == "acc"


def test_packed_text_batches_have_no_padding(tmp_path):
    docs = [{"body": f"Document {i} says {'word ' * (i % 7 + 1)}and ends."} for i in range(60)]
    cfg = DataConfig(source=str(write(tmp_path / "corpus.jsonl", docs, "jsonl")), format="text", text_field="body",
                     n_validation=4, n_calibration=4, n_train=None, max_length=32)
    tokenizer = tiny_tokenizer()
    data = training_data(cfg, tokenizer)
    assert data.metric == "token_prob" and all(len(e["input_ids"]) == 32 for e in data.examples)
    batch = SFTCollator(tokenizer.pad_token_id)(data.examples[:4])
    assert bool(batch["attention_mask"].all()) and batch["input_ids"].shape == (4, 32)
    # every token but the first of a block is a target (the first has no position before it)
    assert (batch["labels"] != -100).sum() == 4 * 31
    blocks = text_blocks(tokenizer, ["abc", "de"], 4)
    assert blocks == [tokenizer("abc", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]]


def test_process_docs_flattens_nested_records(tmp_path):
    nested = [{"context": f"Report {i}", "qa": [{"q": f"q{i}{j}", "a": f"a{j}"} for j in range(3)]} for i in range(40)]
    (tmp_path / "flat.py").write_text(
        "import datasets\n\ndef flatten(ds):\n"
        "    return datasets.Dataset.from_list([{'context': r['context'], 'q': x['q'], 'a': x['a']} "
        "for r in ds for x in r['qa']])\n")
    cfg = DataConfig(source=str(write(tmp_path / "nested.jsonl", nested, "jsonl")), format="completion",
                     doc_to_text="{{context}} {{q}}", doc_to_target=" {{a}}", process_docs=f"{tmp_path}/flat.py:flatten")
    sides = user_sides(cfg)
    assert len(sides.train) + len(sides.test) == 120 and set(sides.test[0]) == {"context", "q", "a", "_uid"}


def test_paths_expand_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_DATA", str(tmp_path))
    assert expand("$MY_DATA/x.jsonl") == f"{tmp_path}/x.jsonl" == expand("${MY_DATA}/x.jsonl")
    monkeypatch.delenv("TRIMLLM_DATA_DIR", raising=False)
    assert expand("${TRIMLLM_DATA_DIR}/sciq").endswith("shared/data/sciq")
    assert task_name(DataConfig(source="$MY_DATA/My Reviews.v2.jsonl")) == "my_reviews"


def recipe_with(source, *overrides):
    return [f"data.source={source}", *overrides]


@pytest.mark.parametrize("overrides, words", [
    (["data.doc_to_target='{{missing}}'"], ["train record 0 has no value for field 'missing'", "fields: question, options"]),
    (["data.doc_to_target=7"], ["templates fail on train record 0", "IndexError"]),
    (["data.doc_to_target=nine"], ["gives 'nine', which is not among its choices"]),
    (["data.doc_to_choice=null"], ["data.doc_to_choice is required"]),
    (["data.format=prose"], ["data.format = 'prose' must be one of multiple_choice, completion, text"]),
    (["data.format=text", "data.text_field=body"], ["text field", "body"]),
    (["data.format=completion", "scoring.scorer=task_accuracy"], ["task_accuracy needs multiple-choice data"]),
    (["data.n_train=5000"], ["train-side records needed"]),
    (["data.name='../up'"], ["data.name = '../up': a task name of letters"]),
    (["data.process_docs=nowhere.py:f"], ["nowhere.py not found"]),
])
def test_validate_checks_the_data_before_any_model_loads(capsys, monkeypatch, tmp_path, overrides, words):
    source = write(tmp_path / "arith.jsonl", RECORDS, "jsonl")
    mc = ["data.doc_to_text='Q: {{question}}'", "data.doc_to_choice='{{options}}'", "data.doc_to_target='{{answer}}'"]
    code, out = run_cli(capsys, monkeypatch, "validate", ROOT / "recipes" / "smoke.yaml",
                        *recipe_with(source, "data.n_train=40", "data.n_validation=10", "data.n_calibration=4", *mc,
                                     *overrides))
    assert code == 2, out
    assert all(w in out for w in words), out
    assert "Traceback" not in out


def test_a_missing_source_and_an_offline_hub_id_fail_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr("trimllm.modeling.hub_offline", lambda: True)
    mc = ["data.doc_to_text=x", "data.doc_to_choice=[a, b]", "data.doc_to_target=0"]
    with pytest.raises(RecipeError, match="does not exist .*working directory"):
        load_recipe(ROOT / "recipes" / "smoke.yaml", [f"data.source={tmp_path}/none.jsonl", *mc])
    with pytest.raises(RecipeError, match="hub cannot be reached"):
        load_recipe(ROOT / "recipes" / "smoke.yaml", ["data.source=someone/some_dataset", *mc])


def test_a_file_that_does_not_parse_is_one_message(capsys, monkeypatch, tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"question": "a"}\n{not json\n')
    code, out = run_cli(capsys, monkeypatch, "validate", ROOT / "recipes" / "smoke.yaml",
                        f"data.source={tmp_path}/broken.jsonl", "data.doc_to_text=x", "data.doc_to_choice=[a, b]",
                        "data.doc_to_target=0")
    assert code == 2 and "broken.jsonl: cannot be read as .jsonl records" in out and "Traceback" not in out


def test_a_mapping_of_split_to_file_is_read_as_splits(tmp_path):
    """data.source: {train: a.jsonl, test: b.jsonl} (datasets' data_files convention) gives the sides that the
    train file with data.splits gives; a mapping with other keys, or beside data.splits, is refused."""
    write(tmp_path / "a.jsonl", RECORDS[:90], "jsonl")
    write(tmp_path / "b.jsonl", RECORDS[90:], "jsonl")
    mc = [f"data.{k}={json.dumps(v)}" for k, v in MC.items()]
    mapping = json.dumps({"train": str(tmp_path / "a.jsonl"), "test": str(tmp_path / "b.jsonl")})
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml", [f"data.source={mapping}", *mc, "data.n_train=40"])
    explicit = data_config(tmp_path / "a.jsonl", splits={"train": str(tmp_path / "a.jsonl"),
                                                         "test": str(tmp_path / "b.jsonl")})
    assert recipe.data.source == str(tmp_path / "a.jsonl") and recipe.data.splits == json.loads(mapping)
    assert user_sides(recipe.data) == user_sides(explicit) and len(user_sides(recipe.data).test) == 30
    with pytest.raises(RecipeError, match=r"data.source as a mapping has the keys \['dev', 'train'\]"):
        load_recipe(ROOT / "recipes" / "smoke.yaml", ['data.source={"train": "a.jsonl", "dev": "b.jsonl"}', *mc])
    with pytest.raises(RecipeError, match="data.splits is set too"):
        load_recipe(ROOT / "recipes" / "smoke.yaml", [f"data.source={mapping}", 'data.splits={"train": "x"}', *mc])


def test_one_source_whichever_constructor_draws_the_same_splits_and_items():
    """Issue 30: one data source with two constructors. Financial PhraseBank read as a user's file, with templates
    that spell the bundled prompt, is the bundled set: the same test side, the same drawn splits (seeded, by
    uid), the same prompts, choices and gold, the same metric."""
    from trimllm.formats import DataSource

    text = ("Sentence: {{sentence}}\nQuestion: Is the sentiment of this financial news sentence negative, neutral "
            "or positive?\nAnswer:")
    own = DataSource.own(DataConfig(
        source="${TRIMLLM_DATA_DIR}/financial_phrasebank/train.jsonl", format="multiple_choice", test_fraction=0.2,
        doc_to_text=text, doc_to_choice='{{["negative", "neutral", "positive"]}}',
        doc_to_target='{{["negative", "neutral", "positive"].index(label)}}'))
    bundled = DataSource.bundled("financial_phrasebank")
    assert [r["_uid"] for r in own.test] == [r["_uid"] for r in bundled.test] and own.metric == bundled.metric == "acc"
    mine, shipped = own.splits(12, 6, seed=3, n_train=20), bundled.splits(12, 6, seed=3, n_train=20)
    for part in ("train", "validation", "calibration"):
        assert [r["_uid"] for r in mine[part]] == [r["_uid"] for r in shipped[part]]
        assert ([(i.context, i.choices, i.gold) for i in own.items(mine[part])]
                == [(i.context, i.choices, i.gold) for i in bundled.items(shipped[part])])
