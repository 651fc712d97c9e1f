"""How far to trust a speed figure: interleaved timing rounds with their spread, the load other processes put on
this process's cores while it timed, a verdict (``noisy``) with one warning line, and thread counts that fit the
cores this process may use.

Why: on a 2-core machine a second job turns a faster model into a slower one (a trimmed model measured at 0.94x
the original's decode speed while a training run shared the cores; 1.04-1.08x of the weight bound on a quiet
machine). A median alone hides that; the spread of the rounds and the CPU time other processes took show it.
Used by ``trimllm bench`` in both runtimes (:mod:`trimllm.bench`, :mod:`trimllm.llamacpp`) and the scripts behind
BENCHMARKS.md.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

# Other processes keeping more than this share of our cores busy (on average, while timing) make figures noisy:
# on 2 cores, 0.4 of a core. A quiet machine measures ~0.01-0.05 (the system's own daemons).
OTHER_LOAD_SHARE = 0.2
# A median this far below the best round (max - median) / max means most rounds were slowed: noise on a CPU only
# ever slows a round, and one slow round (a pause of the interpreter) leaves the median where it was. Measured on a
# quiet 2-core VM, a tiny model's 0.2 s rounds (pinned to one core, nothing else running): up to 0.17 — the VM's
# own drift; rounds of a real model last seconds and drift less.
SHORTFALL_LIMIT = 0.25
# Early stop: after MIN_ROUNDS, stop once every model's main figure spreads less than this.
STOP_SPREAD = 0.05
MIN_ROUNDS = 3


def allowed_cores() -> int:
    """The cores this process may run on (its CPU affinity; a container's or taskset's limit), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_cores(other_load: float | None) -> int:
    """The cores this process may use, less those other processes keep busy (at least one): a thread that waits for
    a core another process holds stalls all the others at every synchronisation. Measured on 2 cores with one
    busy-loop process: 2 torch threads decoded 2.9x slower than on the quiet machine; 1 thread, see BENCHMARKS.md
    "Speed figures on a quiet and a busy machine"."""
    busy = 0 if other_load is None else int(other_load + 0.5)
    return max(1, allowed_cores() - busy)


def fit_threads(other_load: float | None = None) -> int:
    """Cap torch's intra-op threads at :func:`free_cores` (torch counts the machine's cores, not the affinity nor
    what others use); returns the count in use."""
    import torch

    cores = free_cores(other_load)
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return torch.get_num_threads()


def load_now(seconds: float = 0.5) -> float | None:
    """What other processes keep busy right now (average cores over ``seconds``; None without /proc/stat)."""
    meter = LoadMeter().start()
    time.sleep(seconds)
    return meter.stop()


def spread(values: list[float]) -> dict:
    """``{"median", "min", "max"}`` of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def relative_spread(values: list[float]) -> float:
    """(max - min) / median: 0 for identical rounds."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def shortfall(values: list[float]) -> float:
    """(max - median) / max: how far the median falls below the best round (throughputs: higher is better)."""
    best = max(values)
    return (best - statistics.median(values)) / best if best else 0.0


def round_ratios(values: list[float], reference: list[float]) -> dict:
    """The spread of per-round ratios ``values[i] / reference[i]``: rounds interleave the models, so each ratio
    compares two runs made under the same conditions (what a ratio of two medians does not)."""
    return spread([v / r for v, r in zip(values, reference, strict=True)])


def shown(s: dict, digits: int = 1, suffix: str = "") -> str:
    """``26.3 (25.9–26.8)``: the median with the range of the rounds."""
    return f"{s['median']:.{digits}f}{suffix} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def rounded(runs: dict[str, list[float]]) -> dict:
    """Each figure's median (the table's number) and its ``_range`` over the rounds, to 0.1 token/s."""
    out = {}
    for key, values in runs.items():
        s = spread(values)
        out[key], out[f"{key}_range"] = round(s["median"], 1), [round(s["min"], 1), round(s["max"], 1)]
    return out


def ratio_columns(name: str, ratios: dict) -> dict:
    """A speedup (the median of the per-round ratios) and its ``_range``."""
    return {name: round(ratios["median"], 3), f"{name}_range": [round(ratios["min"], 3), round(ratios["max"], 3)]}


def with_range(row: dict, key: str, digits: int = 1, suffix: str = "") -> str:
    """A table cell: the median with the range of the rounds (rows saved before ranges existed: the median)."""
    if f"{key}_range" not in row:
        return f"{row[key]}{suffix}"
    low, high = row[f"{key}_range"]
    return shown({"median": row[key], "min": low, "max": high}, digits, suffix)


class LoadMeter:
    """CPU time other processes took on this process's cores between :meth:`start` and :meth:`stop`, as an average
    number of busy cores: busy time of those cores in ``/proc/stat`` (hypervisor steal included) minus this
    process's own and that of the children it waited for. None where there is no ``/proc/stat`` (the load average
    stands in)."""

    def __init__(self):
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _busy_seconds(self) -> float | None:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        wanted = {f"cpu{i}" for i in self.cores} if self.cores is not None else None
        total = 0
        for line in lines:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu" or (wanted is not None and name not in wanted):
                continue
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            total += user + nice + system + irq + softirq + steal
        return total / self.ticks

    @staticmethod
    def _own_seconds() -> float:
        # The children this process waited for are its own work too (a benchmark that runs each step in a child
        # process measured its own steps as "other" load and called itself noisy).
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system

    def start(self) -> LoadMeter:
        self.began = (time.perf_counter(), self._busy_seconds(), self._own_seconds())
        return self

    def stop(self) -> float | None:
        """Average cores other processes kept busy since :meth:`start` (>= 0)."""
        wall0, busy0, own0 = self.began
        busy, wall = self._busy_seconds(), time.perf_counter() - wall0
        if busy is None or busy0 is None or wall <= 0:
            return None
        return max(0.0, (busy - busy0) - (self._own_seconds() - own0)) / wall


def verdict(other_load: float | None, cores: int, shortfalls: dict[str, float],
            load_average: float | None = None, load_before: float | None = None) -> dict:
    """Whether figures timed while other processes used ``other_load`` cores on average (``load_before`` just before
    the timing; None: unknown, then the 1-minute ``load_average`` minus this process's own core stands in), with
    rounds whose medians fall ``shortfalls`` below their best round (:func:`shortfall`, per figure), can be trusted.
    Returns ``{"noisy", "reasons", "other_load", "cores", "shortfalls"}``."""
    reasons = []
    if other_load is None and load_average is not None:
        other_load = max(0.0, load_average - 1)
    limit = OTHER_LOAD_SHARE * cores
    if other_load is not None and other_load > limit:
        before = f" ({load_before:.1f} just before)" if load_before is not None and load_before > limit else ""
        reasons.append(f"other processes kept {other_load:.1f} of the {cores} cores this process may use busy "
                       f"while timing{before}")
    elif load_before is not None and load_before > limit:
        reasons.append(f"other processes kept {load_before:.1f} of the {cores} cores this process may use busy just "
                       "before timing")
    worst = max(shortfalls.items(), key=lambda kv: kv[1], default=None)
    if worst is not None and worst[1] > SHORTFALL_LIMIT:
        reasons.append(f"the median of {worst[0]} is {worst[1]:.0%} below its best round (most rounds were slowed)")
    return {"noisy": bool(reasons), "reasons": reasons, "other_load": None if other_load is None else round(other_load, 2),
            "cores": cores, "shortfalls": {k: round(v, 3) for k, v in shortfalls.items()}}


def warning_line(noise: dict) -> str | None:
    """The one line above a noisy table (None for a quiet run): what was seen and what to do."""
    if not noise.get("noisy"):
        return None
    return ("WARNING: these speed figures cannot be trusted: " + "; ".join(noise["reasons"]) +
            ". Rerun on a quiet machine (nothing else running), or with more --repeats.")


def interleaved_rounds(names: list[str], measure: Callable[[str, bool], dict[str, float]], max_rounds: int,
                       main: str, log: Callable[[str], None] = print, what: str = "",
                       load_before: float | None = None) -> tuple[dict, dict]:
    """Time every model in turn, round after round: a warm-up round (``measure(name, True)``, not counted), then at
    least ``min(MIN_ROUNDS, max_rounds)`` rounds and at most ``max_rounds``, stopping early once the ``main``
    figure of every model spreads less than :data:`STOP_SPREAD`. ``measure(name, warmup)`` returns tokens/s by
    figure. Logs what is timed with an ETA.

    ``load_before``: the load the caller sampled before (:func:`load_now`), else sampled here.

    Returns ``({name: {figure: [per-round values]}}, noise)`` where ``noise`` is :func:`verdict`'s."""
    runs: dict = {name: {} for name in names}
    other_before = load_before if load_before is not None else load_now()  # what runs besides us
    meter, started, done = LoadMeter().start(), time.perf_counter(), 0
    total = len(names) * (max_rounds + 1)
    for r in range(max_rounds + 1):
        for name in names:
            eta = "" if not done else f", ETA {_duration((time.perf_counter() - started) / done * (total - done))} at most"
            log(f"timing {'warm-up' if r == 0 else f'round {r}/{max_rounds}'}: {name}{what}{eta}")
            figures = measure(name, r == 0)
            done += 1
            if r:
                for key, value in figures.items():
                    runs[name].setdefault(key, []).append(value)
        if r >= min(MIN_ROUNDS, max_rounds) and all(relative_spread(runs[n][main]) < STOP_SPREAD for n in names):
            log(f"stopping after {r} rounds: every {main} within {STOP_SPREAD:.0%}")
            break
    other = meter.stop()
    # The verdict reads the main figure (many steps, the headline number); a sub-millisecond figure (the prefill of
    # a tiny model) jitters with the timer even on a quiet machine. Every figure's spread is kept in the JSON.
    shortfalls = {f"{name} {main}": shortfall(runs[name][main]) for name in names}
    average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    noise = verdict(other, allowed_cores(), shortfalls, load_average=average, load_before=other_before)
    noise["spreads"] = {f"{name} {key}": round(relative_spread(values), 3)
                        for name in names for key, values in runs[name].items()}
    noise["load_before"] = None if other_before is None else round(other_before, 2)
    noise["rounds"] = len(next(iter(runs.values()))[main]) if names else 0
    return runs, noise


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
