"""What every benchmark script shares: its common options, the machine description under each figure, the command
that reproduces it, and publishing (the JSON under ``benchmarks/`` and a section of BENCHMARKS.md).

Scripts import it as ``from _common import ...`` (``python scripts/x.py`` puts this folder first on the path).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from trimllm import timing
from trimllm.atomic import write_text_atomic
from trimllm.bench import environment, environment_line  # noqa: F401  (the scripts' machine description)

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str, out: str, section: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark script takes: ``--model``, ``--device``, ``--out``
    (default ``benchmarks/<out>``), ``--section`` (the BENCHMARKS.md section) and ``--render-only``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / out)
    p.add_argument("--section", default=section, help="the BENCHMARKS.md section it writes")
    p.add_argument("--render-only", action="store_true", help="Re-write BENCHMARKS.md from --out, measure nothing.")
    return p


def training_environment(model) -> dict:
    """The machine description plus the peft and lm-eval versions (the studies train with one, measure with the
    other)."""
    import lm_eval
    import peft

    return {**environment(model), "peft": peft.__version__, "lm_eval": lm_eval.__version__}


def command_line(script: str, args, skip: tuple = ("out", "render_only", "section")) -> str:
    """The command that reproduces a run: ``python scripts/<script>`` with every option given or defaulted."""
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                       if k not in skip and v is not None and v is not False)
    return f"python scripts/{script} {options}"


def shown_path(path: Path, root: Path) -> str:
    """``path`` relative to the checkout ``root`` when inside it (what a reader of BENCHMARKS.md can open)."""
    path = Path(path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


class TimingNoise:
    """The noise check of :mod:`trimllm.timing` around a script's timed runs: the load other processes put on our
    cores just before and while timing, and each configuration's rounds. ``start()`` before the first timed run,
    ``verdict(rounds)`` after the last, with the per-round throughputs (higher is better) of each configuration."""

    def start(self) -> TimingNoise:
        self.before, self.meter = timing.load_now(), timing.LoadMeter().start()
        return self

    def verdict(self, rounds: dict[str, list[float]]) -> dict:
        shortfalls = {name: timing.shortfall(values) for name, values in rounds.items() if len(values) > 1}
        noise = timing.verdict(self.meter.stop(), timing.allowed_cores(), shortfalls, load_before=self.before)
        noise["spreads"] = {name: round(timing.relative_spread(values), 3) for name, values in rounds.items()}
        return noise


def timing_line(noise: dict | None) -> str:
    """How far a table's timing can be trusted: what the load meter saw, or the warning (figures saved before the
    check existed: nothing)."""
    if noise is None:
        return ""
    if noise["noisy"]:
        return "Timing NOISY: " + "; ".join(noise["reasons"]) + "."
    worst = max(noise["shortfalls"].values(), default=0.0)
    return (f"Timing quiet: other processes used {noise['other_load']} of {noise['cores']} cores while timing; "
            f"medians within {worst:.0%} of the best round.")


def publish(figures: dict, json_path: Path, markdown_path: Path, title: str, body: str) -> None:
    """Save the figures as JSON, print the markdown and make it the ``title`` section of ``markdown_path``."""
    write_json(json_path, figures)
    print(body)
    write_section(markdown_path, title, body)


def write_json(path: Path, figures: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(figures, indent=2) + "\n")


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of a markdown file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery figure here is produced by a script under scripts/.\n"
    header, body = f"## {title}\n", body.rstrip("\n")
    if header in text:
        before, rest = text.split(header, 1)
        after = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        text = before + header + "\n" + body + "\n" + ("\n" + after if after else "")
    else:
        text = text.rstrip() + "\n\n" + header + "\n" + body + "\n"
    write_text_atomic(path, text)


def mcnemar_exact(a: list[bool], b: list[bool]) -> float:
    """Two-sided exact McNemar p-value of paired outcomes: a binomial test on the discordant pairs."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_diff(a: list[bool], b: list[bool], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of mean(a) - mean(b), resampling the paired items."""
    d = np.array(a, dtype=np.int8) - np.array(b, dtype=np.int8)
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, len(d), (1000, len(d)))].mean(1) for _ in range(resamples // 1000)])
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)
