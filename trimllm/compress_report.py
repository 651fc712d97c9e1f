"""``compress.md`` and ``compress.png``: what ``trimllm compress`` tried, what it chose and what the choice runs
like, from its ``compress.json``. The model card of ``final/`` carries the same tables."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

from trimllm.atomic import write_text_atomic
from trimllm.depth_search import upper_bound

REPORT, PLOT = "compress.md", "compress.png"


def depth_rows(state: dict) -> list[list[str]]:
    """A row per depth tried: blocks kept, the estimate, the probe, the healed model and its verified drop."""
    reference, n = state["reference"], state["n_blocks"]
    confidence = state.get("choice", {}).get("confidence", 0.95)
    rows = [["0", str(n), f"{reference:.4f}", "", "", "reference"]]
    for depth in sorted({*map(int, state["estimates"]), *map(int, state["probes"]), *map(int, state["heals"])}):
        key, cells = str(depth), [str(depth), str(n - depth)]
        cells.append(f"{state['estimates'][key]:.4f}" if key in state["estimates"] else "")
        probe = state["probes"].get(key)  # its length: a folder reused across probe_fraction keeps older probes
        cells.append(f"{probe['metric']:.4f} ({probe['steps']} steps)" if probe else "")
        heal = state["heals"].get(key)
        cells.append(f"{heal['metric']:.4f}" if heal else "")
        cells.append(f"{heal['drop']:+.2f} ± {heal['se']:.2f} (bound {upper_bound(heal['drop'], heal['se'], confidence):.2f}, "
                     f"n = {heal['n']})" if heal else "")
        rows.append(cells)
    return rows


def markdown(state: dict) -> str:
    choice, proof = state["choice"], state.get("proof", {})
    head = ["blocks removed", "blocks kept", "estimate (no training)", "probe (short healing)", "healed",
            "verified drop, points (one-sided bound)"]
    lines = [f"# trimllm compress: {choice['removed']} of {choice['n_blocks']} blocks removed", "",
             f"Tolerance {choice['tolerance']} points of the validation metric against the full-depth reference "
             f"({state['reference']:.4f}); verified when the drop's one-sided {100 * choice['confidence']:.0f} % "
             "upper bound on held-out items is within it.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in depth_rows(state)]
    share = choice.get("search_share")
    lines += ["", f"Search: the estimates' safe depth {choice['safe_depth']}, probes at {choice['probed'] or 'none'}, "
              f"healed {choice['healed'] or 'none'}; its cost {choice['search_seconds']:.0f} s"
              + (f", {share:.0%} of the final healing's {choice['healing_seconds']:.0f} s" if share is not None else "")
              + "."]
    lines += undecided(state)
    lines += ["", *proof_lines(proof)]
    return "\n".join(lines) + "\n"


def undecided(state: dict) -> list[str]:
    """The healed depths whose drop is within the tolerance but whose interval is not: how many held-out items
    would decide (the standard error shrinks as 1 / sqrt(n))."""
    choice, lines = state["choice"], []
    z = NormalDist().inv_cdf(choice["confidence"])
    for depth, heal in sorted((int(k), v) for k, v in state["heals"].items()):
        margin = choice["tolerance"] - heal["drop"]
        if 0 < margin < z * heal["se"]:
            needed = math.ceil(heal["n"] * (z * heal["se"] / margin) ** 2)
            lines.append(f"- At {depth} blocks removed the drop ({heal['drop']:+.2f}) is within the tolerance but its "
                         f"interval is not (one-sided half-width {z * heal['se']:.2f} points on {heal['n']} held-out "
                         f"items): about {needed} items would decide (compress.verify_items, a lower data.n_train).")
    return [""] + lines if lines else []


def proof_lines(proof: dict) -> list[str]:
    """The deployment proof: each check's line, the test side through the runtime, the speed table."""
    lines = ["## Deployment proof", ""] + [f"- {c['line']}" for c in proof.get("checks", [])]
    test = proof.get("test")
    if test:
        for label in ("original", "compressed"):
            t = test[label]
            stderr = f" ± {t['stderr']:.3f}" if t.get("stderr") is not None else ""
            lines.append(f"- test side through llama.cpp ({test['quant']}), {label}: {t['metric']} "
                         f"{t['value']:.4f}{stderr} (n = {t['n']})")
    if proof.get("speed"):
        from trimllm.llamacpp import table

        lines += ["", table(proof["speed"])]
    return lines


def plot(state: dict, path: Path) -> None:
    """Validation metric against blocks kept: estimates, probes and healed models, the tolerance band, the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, reference, choice = state["n_blocks"], state["reference"], state["choice"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, figures, style in (("estimate (no training)", state["estimates"], "o:"),
                                 ("probe (short healing)", {k: v["metric"] for k, v in state["probes"].items()}, "s--"),
                                 ("healed", {k: v["metric"] for k, v in state["heals"].items()}, "D-")):
        points = sorted((n - int(k), v) for k, v in figures.items())
        if points:
            ax.plot(*zip(*points, strict=True), style, label=name)
    ax.plot([n], [reference], "k*", markersize=10, label="reference (full depth)")
    ax.axhspan(reference - choice["tolerance"] / 100, reference, color="green", alpha=0.15, label="tolerance")
    ax.axhline(reference, color="green", linewidth=0.8)
    kept = n - choice["removed"]
    ax.axvline(kept, color="black", linestyle="--", linewidth=0.8, label=f"chosen: {kept} blocks kept")
    ax.set_xlabel("blocks kept")
    ax.set_ylabel("validation metric")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, state: dict) -> None:
    """``compress.md``, ``compress.png``, and the same tables in ``final/``'s model card."""
    from trimllm.export import add_results_to_card

    text = markdown(state)
    write_text_atomic(out / REPORT, text)
    plot(state, out / PLOT)
    add_results_to_card(out / "final", text.split("\n", 2)[2])

