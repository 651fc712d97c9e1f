"""Tables and plots: ranked score tables and the candidates x scorers heatmap."""

from __future__ import annotations

import json
from pathlib import Path

from trimllm.layout import RunDir
from trimllm.records import StageRecord
from trimllm.scoring import ScoreResult
from trimllm.scoring.candidates import parse


def scores_json(results: list[ScoreResult], meta: dict) -> dict:
    """``{scorer: [{"candidate", "score"}, ...], "meta": {...}}`` (original indices, higher = more important)."""
    data: dict = {r.scorer: r.as_list() for r in results}
    data["meta"] = {**meta, "scorers": {r.scorer: r.meta for r in results}}
    return data


def ranked_table(results: list[ScoreResult]) -> str:
    """Markdown: per scorer, candidates from least to most important (the drop order)."""
    lines = ["Candidates from least to most important (drop order); higher score = more important.", ""]
    for result in results:
        lines += [f"## {result.scorer} ({result.meta.get('seconds', 0):.1f} s)", "", "| rank | candidate | score |",
                  "|---|---|---|"]
        lines += [f"| {i} | {c} | {s:.6g} |" for i, (c, s) in enumerate(result.ranked(), start=1)]
        lines.append("")
    return "\n".join(lines)


def heatmap(results: list[ScoreResult], path: str | Path) -> Path:
    """PNG heatmap: one column per scorer, one row per block; with halves, attention and MLP rows alternate.

    Each scorer's column is shown as its rank (0 = least important) so scorers with different scales compare.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    candidates = sorted(results[0].scores, key=lambda c: (parse(c)[1], parse(c)[0] != "attn"))
    grid = np.zeros((len(candidates), len(results)))
    for j, result in enumerate(results):
        order = {c: i for i, (c, _) in enumerate(result.ranked())}
        grid[:, j] = [order[c] / max(len(candidates) - 1, 1) for c in candidates]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(results), 1.2 + 0.22 * len(candidates)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(results)), [r.scorer for r in results], rotation=30, ha="right")
    ax.set_yticks(range(len(candidates)), candidates, fontsize=7)
    ax.set_title("Importance rank (dark = drop first)")
    fig.colorbar(image, ax=ax, label="rank / (n - 1)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_scores(results: list[ScoreResult], meta: dict, out_dir: str | Path) -> Path:
    """Write ``scores.json``, ``scores.md`` and ``scores.png`` to ``out_dir`` (each file replaced atomically)."""
    from trimllm.atomic import write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "scores.json", json.dumps(scores_json(results, meta), indent=2))
    write_text_atomic(out_dir / "scores.md", ranked_table(results))
    tmp = out_dir / ".scores.tmp.png"
    heatmap(results, tmp)
    tmp.replace(out_dir / "scores.png")
    return out_dir


def stage_report(stages: list[dict], final: dict, recipe) -> str:
    """report.md of a training run: one row per stage, and which stage became final/."""
    from trimllm.formats import data_name

    lines = [
        f"# trimllm run: {recipe.model.name} on {data_name(recipe.data)}",
        "",
        f"Schedule `{recipe.schedule.name}`, scorer `{recipe.scoring.scorer}` ({recipe.scoring.granularity}), "
        f"freezing `{recipe.freeze.mode}`, {recipe.lora.method}, {recipe.train.steps_per_stage} steps per stage"
        + (f" ({recipe.train.final_stage_steps} after the last removal)." if recipe.train.final_stage_steps else "."),
        "",
        "| stage | dropped | blocks kept | params | val acc | scoring s | training s | eval s "
        "| training tokens (real / computed) | padding | real tokens / s | peak memory MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        sec, tokens = s["seconds"], s["tokens"]
        mark = " **(final)**" if s["stage"] == final["stage"] else ""
        lines.append(f"| {s['stage']}{mark} | {', '.join(s['dropped']) or '-'} | {s['blocks_kept']} | {s['params']:,} | "
                     f"{s['val_acc']:.4f} | {sec['scoring']} | {sec['training']} | {sec['evaluation']} | "
                     f"{tokens['real']:,} / {tokens['padded']:,} | {1 - tokens['real'] / max(tokens['padded'], 1):.1%} | "
                     f"{tokens['real'] / max(sec['training'], 1e-9):,.0f} | {s['peak_memory_mb']:,.0f} |")
    floor = f" (accuracy floor {final['floor']:.0%} of stage 0's {final['reference_val_acc']:.4f})" if final["floor"] else ""
    lines += ["", f"final/ = stage {final['stage']}{floor}.", "", "![loss](loss.png) ![accuracy](accuracy.png)", ""]
    return "\n".join(lines)


def stage_line(record: StageRecord, processes: int = 1) -> str:
    """The one-line summary logged after each stage."""
    seconds = record.seconds
    ranks = f"[{processes} processes] " if processes > 1 else ""
    return (f"{ranks}stage {record.stage}: dropped {', '.join(record.dropped) or '-'} | {record.blocks_kept} blocks, "
            f"{record.params:,} params | val acc {record.val_acc:.4f} | scoring {seconds['scoring']:.0f}s, "
            f"training {seconds['training']:.0f}s, eval {seconds['evaluation']:.0f}s | {throughput_line([record])}")


def progress_line(done: int, expected: int | None, seconds: float) -> str:
    """Where the run is after ``done`` stages: elapsed wall time and, when the stage count is known, an ETA from
    the mean stage so far."""
    if expected is None or expected <= done:
        return f"{done} stages done | elapsed {_clock(seconds)}"
    return (f"{done} of ~{expected} stages done | elapsed {_clock(seconds)} | "
            f"ETA ~{_clock(seconds / done * (expected - done))}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def run_summary(run: dict, out: str | Path, wall_seconds: float) -> str:
    """The block printed at the end of `trimllm train`: what the run cost and where its outputs are."""
    stages = [StageRecord(**s) for s in run["stages"]]
    final = run["final"]
    chosen = stages[final["stage"]]
    return "\n".join([
        "", "== trimllm run finished ==",
        f"stages      {len(stages)}; final/ = stage {final['stage']}: {run['num_layers']} -> {chosen.blocks_kept} blocks, "
        f"{run['params_original']:,} -> {chosen.params:,} params, val acc {final['val_acc']:.4f}",
        f"wall time   {_clock(wall_seconds)} this invocation; stages {_clock(sum(sum(s.seconds.values()) for s in stages))} "
        "(scoring + training + validation)",
        f"training    {throughput_line(stages)}",
        f"outputs     {Path(out) / 'final'}  {Path(out) / 'report.md'}",
    ])


def throughput_line(stages: list[StageRecord]) -> str:
    """Training tokens (real / as computed with padding), real tokens/s and peak memory of some stages."""
    real = sum(s.tokens["real"] for s in stages)
    padded = sum(s.tokens["padded"] for s in stages)
    seconds = sum(s.seconds["training"] for s in stages)
    return (f"tokens {real:,} real / {padded:,} computed ({1 - real / max(padded, 1):.1%} padding), "
            f"{real / max(seconds, 1e-9):,.0f} tokens/s, peak memory {max(s.peak_memory_mb for s in stages):,.0f} MB")


def stage_plots(run_dir: str | Path) -> None:
    """loss.png (training loss with stage boundaries) and accuracy.png (val acc vs blocks kept) from a run dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = RunDir(run_dir).metrics  # absent when no stage trained a step (oneshot with train.stage0_steps=0)
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    losses = [r for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset, boundaries, xs, ys = 0, [], [], []
    for stage in sorted({r["stage"] for r in losses}):
        points = [r for r in losses if r["stage"] == stage]
        xs += [offset + r["step"] for r in points]
        ys += [r["loss"] for r in points]
        offset += max(r["step"] for r in points)
        boundaries.append(offset)
    ax.plot(xs, ys, marker=".")
    for x in boundaries[:-1]:
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training step (dashed: stage boundary)")
    ax.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)

    plan = json.loads(RunDir(run_dir).run_file.read_text())
    fig, ax = plt.subplots(figsize=(5, 3.5))
    kept = [s["blocks_kept"] for s in plan["stages"]]
    ax.plot(kept, [s["val_acc"] for s in plan["stages"]], marker="o")
    for s in plan["stages"]:
        ax.annotate(str(s["stage"]), (s["blocks_kept"], s["val_acc"]), textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("blocks kept")
    ax.set_ylabel("validation accuracy")
    ax.invert_xaxis()
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy.png", dpi=100)
    plt.close(fig)
