"""Safety of run folders (issue 29) on whole runs of a tiny model: one process per run folder (a lock that a dead
process does not hold), a resume that refuses changed data before it rewrites anything, and a template payload that
never reaches a task file."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli, save_tiny
from tests.integration.test_user_data_runs import SUMS, TINY_RUN

pytestmark = pytest.mark.integration
SMOKE = ROOT / "recipes" / "smoke.yaml"
MC = ["data.format=multiple_choice", "data.doc_to_text='{{q}}'", "data.doc_to_choice='{{options}}'",
      "data.doc_to_target='{{gold}}'"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def write_sums(path, records=SUMS):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def train(capsys, monkeypatch, tiny_dir, source, out, *extra):
    return run_cli(capsys, monkeypatch, "train", SMOKE, f"model.name={tiny_dir}", f"output_dir={out}",
                   f"data.source={source}", *MC, *TINY_RUN, *extra)


HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom trimllm.rundir import lock\nlock(Path(sys.argv[1]))\n"
          "print('locked', flush=True)\ntime.sleep(120)\n")


def test_a_second_run_in_the_same_folder_is_refused_with_the_first_ones_pid(capsys, monkeypatch, tmp_path, tiny_dir):
    source, out = write_sums(tmp_path / "sums.jsonl"), tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, text = train(capsys, monkeypatch, tiny_dir, source, out)
        assert code == 2 and f"in use by another trimllm run (pid {holder.pid})" in text, text
        assert not (out / "resolved.yaml").exists()  # the second process wrote nothing
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.2)
    code, text = train(capsys, monkeypatch, tiny_dir, source, out)  # a dead holder's lock blocks nothing
    assert code == 0, text
    assert (out / "final" / "model.safetensors").is_file()


def test_resume_refuses_data_that_changed_and_rewrites_nothing(capsys, monkeypatch, tmp_path, tiny_dir):
    source, out = write_sums(tmp_path / "sums.jsonl"), tmp_path / "run"
    assert train(capsys, monkeypatch, tiny_dir, source, out)[0] == 0
    fingerprint = json.loads((out / "run.json").read_text())["data"]
    assert set(fingerprint) == {"train", "validation", "calibration", "test"}
    task_files = {p.name: p.read_bytes() for p in (out / "tasks").iterdir()}
    assert train(capsys, monkeypatch, tiny_dir, source, out)[0] == 0  # the same data: the finished run's result
    edited = [dict(r) for r in SUMS]
    for record in edited:
        record["q"] = record["q"].replace("plus", "and")  # every record: the train side and the test side
    write_sums(source, edited)
    code, text = train(capsys, monkeypatch, tiny_dir, source, out)
    assert code == 2 and "holds a run trained on other data" in text and "train" in text, text
    assert "set output_dir=..." in text and "--overwrite" in text
    assert {p.name: p.read_bytes() for p in (out / "tasks").iterdir()} == task_files  # the test file kept
    code, text = train(capsys, monkeypatch, tiny_dir, source, out, "--overwrite")  # the way out it names
    assert code == 0, text


def test_a_template_payload_stops_train_before_any_file_is_written(capsys, monkeypatch, tmp_path, tiny_dir):
    source, out = write_sums(tmp_path / "sums.jsonl"), tmp_path / "run"
    payload = "{{ lipsum.__globals__['os'].popen('touch " + str(tmp_path / "ran") + "').read() }}{{q}}"
    code, text = train(capsys, monkeypatch, tiny_dir, source, out, "data.doc_to_text=" + json.dumps(payload))
    assert code == 2 and "reaches beyond the record's fields" in text, text
    assert not (tmp_path / "ran").exists() and not out.exists()
