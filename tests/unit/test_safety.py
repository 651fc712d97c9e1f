"""Safety, round 3 (issue 29), as a hostile or careless user tries it: templates run no code, missing fields are not
the text "None", validation never overlaps training, an empty source is not the bundled data, --overwrite never
deletes a file trimllm did not write at any depth, and the Python API checks its argument types. Every case: one
clear message, exit 2 (or a typed exception), nothing touched. Add a case as a row."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ROOT, run_cli, save_tiny
from tests.unit.test_user_data import RECORDS, write

SMOKE = ROOT / "recipes" / "smoke.yaml"
SIZES = ["data.n_train=40", "data.n_validation=10", "data.n_calibration=4"]
MC = ["data.doc_to_text='Q: {{question}}'", "data.doc_to_choice='{{options}}'", "data.doc_to_target='{{answer}}'"]


def validate(capsys, monkeypatch, *overrides) -> tuple[int, str]:
    return run_cli(capsys, monkeypatch, "validate", SMOKE, *overrides)


# --- 1. templates: nothing runs, whatever the template says ------------------------------------------------------
PAYLOADS = [
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ lipsum|attr('__globals__') }}{{ 'touch MARKER' }}",
    "{{ '{0.__class__}'.format(question) }}",
    "{{ question['__class__'] }}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_template_that_reaches_for_code_is_refused_and_never_runs(capsys, monkeypatch, tmp_path, payload):
    monkeypatch.chdir(tmp_path)  # where the payload would write its marker
    source = write(tmp_path / "arith.jsonl", RECORDS, "jsonl")
    template = payload.replace("MARKER", str(tmp_path / "ran"))
    code, out = validate(capsys, monkeypatch, f"data.source={source}", *SIZES, *MC,
                         "data.doc_to_text=" + json.dumps(template))
    assert code == 2 and "Traceback" not in out, out
    assert "data.doc_to_text reaches beyond the record's fields" in out
    assert not (tmp_path / "ran").exists()  # the payload did not run


def test_the_sandbox_refuses_at_render_time_what_no_static_rule_names(tmp_path):
    # Unsafe calls that need no underscore or format (here a list's mutation through the immutable sandbox).
    from trimllm.config import DataConfig
    from trimllm.templates import record_problem

    cfg = DataConfig(source="x.jsonl", doc_to_text="{{ options.append('x') }}{{ options }}", doc_to_choice="{{options}}",
                     doc_to_target="{{answer}}")
    problem = record_problem(cfg, dict(RECORDS[0]), "train", 0)
    assert problem is not None and "refused by Jinja's sandbox" in problem


# --- 2. a missing field, a null, an empty CSV cell: refused, never the text "None" ------------------------------
def test_a_record_without_a_field_the_template_reads_is_refused_by_record_and_field(capsys, monkeypatch, tmp_path):
    records = [dict(r) for r in RECORDS]
    del records[57]["question"]
    source = write(tmp_path / "arith.jsonl", records, "jsonl")
    code, out = validate(capsys, monkeypatch, f"data.source={source}", *SIZES, *MC)
    assert code == 2 and "has no value for field 'question'" in out and "render as the text 'None'" in out, out
    assert "record" in out and "Traceback" not in out


def test_csv_keeps_na_as_text_and_refuses_an_empty_cell(capsys, monkeypatch, tmp_path):
    from trimllm.config import DataConfig
    from trimllm.user_data import user_sides

    rows = "prompt,target\n" + "".join(f"Question {i}?, NA\n" for i in range(30))
    (tmp_path / "na.csv").write_text(rows)
    sides = user_sides(DataConfig(source=str(tmp_path / "na.csv"), format="completion"))
    assert {r["target"] for r in sides.train + sides.test} == {" NA"}  # the text, not a missing value
    (tmp_path / "empty.csv").write_text(rows + "Question 99?,\n")
    code, out = validate(capsys, monkeypatch, f"data.source={tmp_path / 'empty.csv'}", "data.format=completion",
                         "data.doc_to_text='{{prompt}}'", "data.doc_to_target='{{target}}'", "data.n_train=10",
                         "data.n_validation=4", "data.n_calibration=2", "data.test_fraction=0.5")
    assert code == 2 and "has no value for field 'target'" in out and "empty CSV cell" in out, out


def test_every_record_is_checked_not_only_the_first_ones(capsys, monkeypatch, tmp_path):
    records = [dict(r) for r in RECORDS]
    records[100]["answer"] = "nine"  # far past the first 20 records
    source = write(tmp_path / "arith.jsonl", records, "jsonl")
    code, out = validate(capsys, monkeypatch, f"data.source={source}", *SIZES, *MC)
    assert code == 2 and "gives 'nine', which is not among its choices" in out, out


# --- 3. validation never overlaps training ---------------------------------------------------------------------
def test_a_validation_split_that_overlaps_the_train_split_is_refused(capsys, monkeypatch, tmp_path):
    train = write(tmp_path / "train.jsonl", RECORDS[:80], "jsonl")
    write(tmp_path / "validation.jsonl", RECORDS[70:90], "jsonl")
    write(tmp_path / "test.jsonl", RECORDS[90:], "jsonl")
    code, out = validate(capsys, monkeypatch, f"data.source={train}", *SIZES, *MC,
                         f"data.splits={{train: {train}, validation: {tmp_path / 'validation.jsonl'}, "
                         f"test: {tmp_path / 'test.jsonl'}}}")
    assert code == 2 and "10 record(s) are on both the train side and the validation side" in out, out


# --- 4. an empty source, and own-data keys without a source --------------------------------------------------------
@pytest.mark.parametrize("overrides, words", [
    (["data.source=''", *MC], "data.source is empty (an unset $VARIABLE?)"),
    (["data.source='  '", *MC], "data.source is empty"),
    (MC, "data.doc_to_text, data.doc_to_choice, data.doc_to_target given without data.source"),
    (["data.process_docs=my.py:f"], "data.process_docs given without data.source"),
])
def test_an_empty_source_never_trains_on_the_bundled_data(capsys, monkeypatch, overrides, words):
    code, out = validate(capsys, monkeypatch, *overrides)
    assert code == 2 and words in out and "Traceback" not in out, out


# --- 5. --overwrite compares recursively ---------------------------------------------------------------------------
def fake_run(folder):
    """A run folder as trimllm writes it (an own-data run: tasks/, stage_00/, final/, the Trainer's folder)."""
    for name in ("resolved.yaml", "run.json", "metrics.jsonl", "final/config.json", "final/model.safetensors",
                 "stage_00/config.json", "tasks/mine.yaml", "tasks/mine_test.jsonl", "final_eval/results.json",
                 ".trainer/stage_01/checkpoint-2/optimizer.pt", ".lock"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    return folder


def test_a_run_folder_with_its_own_subfolders_is_a_run_and_a_note_inside_makes_it_not():
    import tempfile
    from pathlib import Path

    from trimllm.outputs import foreign_paths, kind_of

    with tempfile.TemporaryDirectory() as tmp:
        run = fake_run(Path(tmp))
        assert kind_of(run) == "a trimllm run"  # tasks/ and stage_XX/ are trimllm's (every own-data run has them)
        (run / "final" / "NOTES.md").write_text("my notes")
        (run / "tasks" / "sub").mkdir()
        assert kind_of(run) is None
        assert foreign_paths(run, "a trimllm run") == ["final/NOTES.md", "tasks/sub/"]


def test_overwrite_refuses_a_run_with_a_users_file_in_a_subfolder_and_names_it(capsys, monkeypatch, tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "final" / "NOTES.md").write_text("my notes")
    code, out = run_cli(capsys, monkeypatch, "train", SMOKE, f"output_dir={run}", "--overwrite")
    assert code == 2 and "final/NOTES.md" in out and "nothing was deleted" in out, out
    assert (run / "final" / "NOTES.md").read_text() == "my notes" and (run / "run.json").is_file()


def test_drop_overwrite_refuses_an_export_holding_a_folder_of_the_users(capsys, monkeypatch, tmp_path):
    tiny = save_tiny("llama", tmp_path / "tiny")
    out = tmp_path / "export"
    assert run_cli(capsys, monkeypatch, "drop", tiny, "--blocks", "1", "--out", out)[0] == 0
    (out / "mine").mkdir()
    (out / "mine" / "keep.txt").write_text("x")
    code, text = run_cli(capsys, monkeypatch, "drop", tiny, "--blocks", "2", "--out", out, "--overwrite")
    assert code == 2 and "mine/" in text and (out / "mine" / "keep.txt").is_file(), text


# --- 6. the Python API checks its types -----------------------------------------------------------------------------
@pytest.mark.parametrize("call, words", [
    (lambda t: t.train(overwrite="no"), "overwrite=...) takes True or False, got str 'no'"),
    (lambda t: t.train(123), "takes a recipe YAML path (str or os.PathLike)"),
    (lambda t: t.load_model(None), "load_model(spec) takes a packaged name"),
    (lambda t: t.compress(overwrite=1), "trimllm.compress(overwrite=...) takes True or False, got int 1"),
])
def test_the_python_api_refuses_wrong_types_before_any_work(call, words):
    import trimllm

    with pytest.raises(TypeError, match=None) as info:
        call(trimllm)
    assert words in str(info.value)


def test_the_python_api_passes_paths_and_unicode_through(monkeypatch, tmp_path):
    from pathlib import Path

    import trimllm
    from trimllm import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "run", lambda recipe, overwrite=False: seen.update(recipe=recipe) or {})
    source = write(tmp_path / "arith.jsonl", RECORDS, "jsonl")
    trimllm.train(SMOKE, output_dir=Path(tmp_path / "run"),
                  data={"source": Path(source), "doc_to_text": "Q ✅🙂: {{question}}", "doc_to_choice": "{{options}}",
                        "doc_to_target": "{{answer}}", "n_train": 40, "n_validation": 10, "n_calibration": 4})
    assert seen["recipe"].output_dir == str(tmp_path / "run")
    assert seen["recipe"].data.doc_to_text == "Q ✅🙂: {{question}}"  # no lone surrogates


# --- poor, round 3: each one message, exit 2 ----------------------------------------------------------------------
PROCESS_DOCS = {
    "returns_none": "def f(ds):\n    ds.map(lambda r: r)\n",
    "syntax_error": "def f(ds)\n    return ds\n",
    "missing_import": "import no_such_module_here\n\ndef f(ds):\n    return ds\n",
    "exits": "import sys\n\ndef f(ds):\n    sys.exit()\n",
}


@pytest.mark.parametrize("case, words", [
    ("returns_none", "returned NoneType; it must return the records"),
    ("syntax_error", "failed to load (line 1): SyntaxError"),
    ("missing_import", "failed to load: ModuleNotFoundError"),
    ("exits", "failed on 120 records: SystemExit"),  # not the end of the program with exit 0
])
def test_a_broken_process_docs_is_one_message(capsys, monkeypatch, tmp_path, case, words):
    source = write(tmp_path / "arith.jsonl", RECORDS, "jsonl")
    (tmp_path / "prep.py").write_text(PROCESS_DOCS[case])
    code, out = validate(capsys, monkeypatch, f"data.source={source}", *SIZES, *MC,
                         f"data.process_docs={tmp_path / 'prep.py'}:f")
    assert code == 2 and words in out and "Traceback" not in out, out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def test_eval_options_that_cannot_work(capsys, monkeypatch, tmp_path, tiny_dir):
    cases = [
        (["--limit", "inf"], "--limit must be > 0"),
        (["--include-path", str(tmp_path / "nowhere")], "is not there; --include-path is a folder"),
        (["--include-path", str(__file__)], "is a file; --include-path is a folder"),
    ]
    for args, words in cases:
        code, out = run_cli(capsys, monkeypatch, "eval", tiny_dir, "--tasks", "sciq", *args)
        assert code == 2 and words in out and "Traceback" not in out, (args, out)
    code, out = run_cli(capsys, monkeypatch, "eval", tmp_path / "gone.gguf", "--runtime", "llamacpp", "--tasks", "sciq")
    assert code == 2 and "GGUF file" in out and "does not exist" in out and "not a .gguf file" not in out, out


def test_include_path_yamls_are_checked_before_the_model_loads(capsys, monkeypatch, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "broken.yaml").write_text("task: mine\n  dataset_path: [json\n")
    code, out = run_cli(capsys, monkeypatch, "eval", tmp_path / "no-model-needed", "--tasks", "mine",
                        "--include-path", tasks)
    assert code == 2 and "is not a valid task YAML" in out and "line 2, column 15" in out, out
    # a run folder moved after trimllm wrote its task (the data path inside is absolute)
    (tasks / "broken.yaml").write_text(f"task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                       f"    test: {tmp_path / 'old-place' / 'mine_test.jsonl'}\n")
    code, out = run_cli(capsys, monkeypatch, "eval", tmp_path / "no-model-needed", "--tasks", "mine",
                        "--include-path", tasks)
    assert code == 2 and "which does not exist (was the run folder moved?" in out and "old-place" in out, out


def test_an_output_that_is_a_symlink_is_refused(capsys, monkeypatch, tmp_path, tiny_dir):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, out = run_cli(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "1", "--out", tmp_path / "link", "--overwrite")
    assert code == 2 and "is a symbolic link" in out and (tmp_path / "link").is_symlink(), out


def test_a_full_disk_is_one_message(capsys, monkeypatch, tmp_path, tiny_dir):
    import errno

    from trimllm import export

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "model.safetensors"))

    monkeypatch.setattr(export, "save_compressed", full)
    monkeypatch.setattr("trimllm.cli.save_compressed", full, raising=False)
    code, out = run_cli(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "1", "--out", tmp_path / "out")
    assert code == 2 and "no space left on the disk" in out and "model.safetensors" in out, out
    assert "Traceback" not in out


def test_a_long_legal_output_name_and_stale_temporaries_of_dead_processes(capsys, monkeypatch, tmp_path, tiny_dir):
    out = tmp_path / ("m" * 245)  # legal (<= 255 bytes); its temporary sibling must be too
    dead = subprocess_pid_that_exited()
    stale = tmp_path / f".{out.name[:180]}.tmp-{dead}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"0" * 1024)
    live = tmp_path / f".{out.name[:180]}.tmp-{os.getppid()}-abc123"  # a running process's: not ours to remove
    live.mkdir()
    users = tmp_path / ".notes.tmp-keep"
    users.write_text("x")
    code, text = run_cli(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "1", "--out", out)
    assert code == 0, text
    assert (out / "model.safetensors").is_file()
    assert not stale.exists() and live.exists() and users.exists()


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_commands_do_not_import_the_trainer_on_their_way_out():
    # `trimllm export --help` took 5.4 s, 3.3 s of it importing transformers' Trainer while exiting.
    import subprocess
    import sys

    code = ("import sys\nfrom trimllm.cli import main\nsys.argv = ['trimllm', 'export', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('TRAINER' if 'transformers.trainer' in sys.modules else 'NO-TRAINER')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip().endswith("NO-TRAINER"), done.stdout[-500:] + done.stderr[-500:]


def test_lm_evals_internals_do_not_surface(capsys, monkeypatch, tmp_path):
    source = write(tmp_path / "arith.jsonl", RECORDS, "jsonl")
    mc = ["data.doc_to_text='Q: {{question}}'", "data.doc_to_target=0"]
    for choice in ("'{{solution}}, x'", "'{{question}}'"):  # lm-eval: ValueError <ast.Name ...>, SyntaxError
        code, out = validate(capsys, monkeypatch, f"data.source={source}", *SIZES, *mc, f"data.doc_to_choice={choice}")
        assert code == 2 and "data.doc_to_choice must render a list of the choices" in out and "<ast." not in out, out


def test_a_file_that_is_not_utf8_names_its_line(capsys, monkeypatch, tmp_path):
    good = "".join(json.dumps(r) + "\n" for r in RECORDS)
    (tmp_path / "latin.jsonl").write_bytes(good.encode() + '{"question": "café"}\n'.encode("latin-1"))
    code, out = validate(capsys, monkeypatch, f"data.source={tmp_path / 'latin.jsonl'}", *SIZES, *MC)
    assert code == 2 and f"line {len(RECORDS) + 1}: not UTF-8" in out and "Traceback" not in out, out


def test_restarting_a_run_that_completed_no_stage_does_not_speak_of_overwrite(capsys, monkeypatch, tmp_path):
    # The run there completed no stage, so a changed recipe starts it over; a file of the user's inside stops that,
    # and the message names what trimllm was doing, not an --overwrite that was never given.
    run = tmp_path / "run"
    run.mkdir()
    (run / "resolved.yaml").write_text("train:\n  lr: 1.0\n")
    (run / "mine.txt").write_text("keep")
    code, out = run_cli(capsys, monkeypatch, "train", SMOKE, f"output_dir={run}", "model.name=smollm2-135m")
    assert code == 2 and "starting over (the run there completed no stage) would delete" in out, out
    assert "--overwrite would" not in out and (run / "mine.txt").read_text() == "keep"


def test_a_child_like_the_converter_dies_with_its_killed_parent():
    import signal
    import subprocess
    import sys
    import time

    parent_code = ("import subprocess, sys, time\nfrom trimllm.atomic import die_with_parent\n"
                   "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
                   "preexec_fn=die_with_parent)\nprint(child.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)  # as a user's `kill -9` or the OOM killer would
    parent.wait()
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return  # gone with its parent
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its killed parent")
