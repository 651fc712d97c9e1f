"""How far a speed figure can be trusted: the noise decision on given loads and round times, the early stop of
interleaved rounds, the load meter against real busy processes, and torch's threads against a restricted affinity."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from trimllm import timing
from trimllm.timing import (
    LoadMeter,
    allowed_cores,
    interleaved_rounds,
    relative_spread,
    round_ratios,
    shortfall,
    verdict,
    warning_line,
)

BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


def busy_processes(count: int, seconds: float) -> list[subprocess.Popen]:
    """Bounded busy loops (each ends by itself after ``seconds``; the caller stops them sooner)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=seconds)]) for _ in range(count)]


@pytest.mark.parametrize("other_load, rounds, noisy, said", [
    (0.02, {"a decode": [100, 98, 101]}, False, None),  # a quiet machine
    (1.9, {"a decode": [50, 49, 51]}, True, "kept 1.9 of the 2 cores"),  # a second job on both cores, all along
    (0.3, {"a decode": [100, 98, 101]}, False, None),  # a daemon's blip: under a fifth of the cores
    (0.02, {"a decode": [100, 80, 101]}, False, None),  # one slow round: the median holds
    (0.05, {"a decode": [100, 99, 101], "b decode": [100, 58, 60]}, True, "median of b decode is 40% below its best"),
    (None, {"a decode": [100, 98, 101]}, False, None),  # no /proc/stat and no load average: the rounds decide
])
def test_noise_decision_on_given_loads_and_round_times(other_load, rounds, noisy, said):
    noise = verdict(other_load, 2, {name: shortfall(values) for name, values in rounds.items()})
    assert noise["noisy"] is noisy
    line = warning_line(noise)
    if said is None:
        assert line is None
    else:
        assert said in line and line.startswith("WARNING") and "Rerun on a quiet machine" in line
        assert "\n" not in line  # one line above the table


def test_the_load_average_stands_in_where_no_meter_ran():
    # the 1-minute load average counts this process itself: one core of it is ours
    assert verdict(None, 2, {}, load_average=3.1)["noisy"] is True
    assert verdict(None, 2, {}, load_average=1.2)["noisy"] is False


def test_spread_and_per_round_ratios():
    assert relative_spread([10.0, 11.0, 12.0]) == pytest.approx(2 / 11)
    # a ratio per round, not a ratio of medians: round 2 was slow for both models alike
    ratios = round_ratios([20.0, 10.0, 20.0], [10.0, 5.0, 10.0])
    assert ratios == {"median": 2.0, "min": 2.0, "max": 2.0}


def test_rounds_stop_early_once_steady_and_go_on_while_spread():
    calls = []

    def steady(name, warmup):
        calls.append((name, warmup))
        return {"decode": 100.0}

    runs, noise = interleaved_rounds(["a", "b"], steady, 8, "decode", log=lambda line: None)
    assert calls[:2] == [("a", True), ("b", True)]  # a warm-up round, not counted
    assert len(runs["a"]["decode"]) == len(runs["b"]["decode"]) == 3 == noise["rounds"]  # stopped at the minimum

    values = iter([100.0, 50.0, 100.0, 60.0, 100.0, 70.0, 100.0, 55.0, 100.0, 90.0, 100.0])
    runs, _ = interleaved_rounds(["a"], lambda name, warmup: {"decode": next(values)}, 5, "decode", log=lambda line: None)
    assert len(runs["a"]["decode"]) == 5  # never steady: every round up to --repeats


def test_progress_says_what_is_timed_with_an_eta():
    lines = []
    interleaved_rounds(["m1", "m2"], lambda name, warmup: {"decode": 10.0}, 3, "decode", log=lines.append,
                       what=" (decode 8 tokens)")
    assert lines[0] == "timing warm-up: m1 (decode 8 tokens)"  # nothing timed yet: no ETA
    assert lines[2].startswith("timing round 1/3: m1 (decode 8 tokens), ETA ") and lines[2].endswith("at most")


def test_the_load_meter_sees_other_processes_and_not_this_one():
    meter = LoadMeter().start()
    end = time.perf_counter() + 0.6
    while time.perf_counter() < end:  # this process's own work is not "other"
        pass
    assert meter.stop() < 0.3
    cores = allowed_cores()
    workers = busy_processes(cores, 30)
    try:
        time.sleep(0.3)  # they start
        meter = LoadMeter().start()
        time.sleep(1.5)
        seen = meter.stop()
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert seen > 0.6 * cores, seen


def test_a_child_process_this_one_waited_for_is_its_own_work():
    meter = LoadMeter().start()
    subprocess.run([sys.executable, "-c", "import time\nend = time.perf_counter() + 1.0\n"
                    "while time.perf_counter() < end: pass"], check=True)
    assert meter.stop() < 0.3


def test_torch_threads_fit_a_restricted_affinity():
    # In a child: pin it to one core, ask torch for four threads (as it would count the machine's), fit them.
    code = ("import json, os, torch\nfrom trimllm.timing import allowed_cores, fit_threads\n"
            "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\ntorch.set_num_threads(4)\n"
            "print(json.dumps([allowed_cores(), fit_threads(), torch.get_num_threads()]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1, 1, 1]
    assert timing.fit_threads() <= allowed_cores()


def test_threads_fit_the_cores_others_leave_free(monkeypatch):
    monkeypatch.setattr(timing, "allowed_cores", lambda: 2)
    assert [timing.free_cores(x) for x in (None, 0.02, 0.3, 1.0, 1.6, 5.0)] == [2, 2, 2, 1, 1, 1]


def test_the_warning_says_whether_the_load_was_seen_before_or_while_timing():
    assert "busy just before timing" in warning_line(verdict(0.1, 2, {}, load_before=1.6))
    line = warning_line(verdict(1.1, 2, {}, load_before=2.0))
    assert "kept 1.1 of the 2 cores this process may use busy while timing (2.0 just before)" in line
