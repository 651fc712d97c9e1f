"""study_v3.py's figure: test accuracy against training compute per arm."""

from __future__ import annotations

from pathlib import Path


def plot(records: list[dict], path: Path, arms: tuple[str, ...], full_depth: tuple[str, ...]) -> None:
    """Accuracy against training compute, a panel per task x fraction, full depth as the line to reach (``arms``:
    the study's arms, in the order that assigns their colours; ``full_depth``: the full-depth arms, drawn in every panel of their task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({(r["task"], r["removed_fraction"]) for r in records if r["arm"] not in full_depth})
    colors = {arm: plt.get_cmap("tab20")(i % 20) for i, arm in enumerate(dict.fromkeys([*arms, *(r["arm"] for r in records)]))}
    figure, axes = plt.subplots(1, max(1, len(cells)), figsize=(6.5 * max(1, len(cells)), 4.5), squeeze=False)
    for axis, (task, fraction) in zip(axes[0], cells, strict=False):
        for r in (r for r in records if r["task"] == task and r["arm"] == "full"):
            axis.axhline(r["acc"], color="grey", linestyle="--", label=f"full depth at the budget, seed {r['seed']}")
        for r in records:  # the cell's arms and full depth's, each point named beside it
            if r["task"] != task or r["removed_fraction"] not in (fraction, 0.0):
                continue
            axis.errorbar(r["compute_pflops"], r["acc"], yerr=r["acc_stderr"], capsize=3, color=colors[r["arm"]],
                          fmt="s" if r["arm"].startswith("full") else "o")
            axis.annotate(r["arm"] + (f" (seed {r['seed']})" if r["seed"] else ""), (r["compute_pflops"], r["acc"]),
                          xytext=(5, -3), textcoords="offset points", fontsize=7)
        axis.set(title=f"{task}, {fraction:.0%} of blocks removed", xlabel="training compute, PFLOPs",
                 ylabel="test accuracy")
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
