"""Study v3: recovering a knowledge domain after depth pruning, every arm on a training-compute axis.

    python scripts/study_v3.py                       # SciQ 50 % first; hours on a 2-core CPU, resumable
    python scripts/study_v3.py --tasks financial_phrasebank --fractions 0.25 --arms full,default,default-bridge
    python scripts/study_v3.py --render-only         # the BENCHMARKS.md section and the plot from the JSON

Budget and setup as study v2 (scripts/study.py: one epoch of batch 16 over 1000 SciQ / 1500 Financial PhraseBank
/ 1000 MedMCQA train-side examples, LoRA on every linear layer, 10 % warm-up and cosine decay). Arms:

- ``full``: full depth, LoRA r16 at 2e-4 for the budget: the reference, and the teacher / stage 0 of the arms below;
- ``default``: the shipped recipe (``tuned_oneshot``): block influence on ``full``'s model, remove at once, train
  the pruned model with LoRA r64 at 6e-4 for the budget (study v2's ``oneshot-ft-r64-lr``);
- ``default-bridge``: + a linear bridge folded in at each cut before training (ReplaceMe; ``bridge: {}``);
- ``default-bridge-kd``: + distillation from ``full``'s model at the answer tokens and 16 other positions per
  row, read from a teacher-logit cache (top-64, ``distill.cache_k``) shared by the task x seed's arms;
- ``oneshot-matched``: block influence on the base model, remove at once, LoRA r64 at 6e-4 for as many steps as
  ``default``'s compute buys the pruned model (ShortGPT / Gromov et al. at equal compute);
- ``full-matched``: ``full`` trained for ``default``'s compute;
- ``default-fullft``: ``default`` with full fine-tuning of the pruned model at 5e-5 instead of LoRA (6ND, not 4ND);
- ``default-teacherkl``: ``default`` with the blocks chosen by ``teacher_kl`` (KL to the unpruned model's output);
- ``oneshot-corpus``: ``oneshot-matched`` distilled from ``full``'s model (cached top-64, alpha 0.5) at every
  position of the examples and of 1000 other records' SciQ support passages (``distill.corpus``), at ``default``'s
  compute with the cache's build and the LM head at every position counted; ``oneshot-corpus-steps``: the same at
  ``oneshot-matched``'s steps (more compute: what the passages do per step);
- ``<arm>-4x`` (``full-4x``, ``default-4x``, ``oneshot-4x``, ``default-bridge-4x``, ...): the longer budget, the
  arm with 4x the training examples (and steps) for its last training (the ``default`` arms keep ``full``'s
  one-epoch stage 0; ``oneshot-4x`` is ``oneshot-matched``'s recipe), capped at the train side less validation.

Training compute (the x axis): the 6ND rule per stage, in PFLOPs, counting every stage an arm needs (``full``'s
training for the arms that start from it): a LoRA step is 4 x (block parameters) x (padded tokens) (forward and
the activations' backward; the adapters' own gradients are small), a full fine-tune's 6 x; the LM head counts where
logits are computed (all positions of the teacher-logit cache's build, the KL's extra positions); scoring and the
bridge's calibration forwards (64 examples) are left out. Test accuracy: every test-side document, per-item
outcomes saved for paired tests (exact McNemar, paired bootstrap). Records are saved after every arm; a record in
--out is skipped, a killed run resumes from its checkpoints in --work.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from _common import (
    ROOT,
    command_line,
    environment_line,
    parser,
    publish,
    shown_path,
    training_environment,
    write_json,
)
from _study_check import record_key
from _study_v3_plot import plot
from _study_v3_tokens import corpus_tokens, mean_tokens
from study import N_TRAIN, budget_steps, comparisons, evaluate_arm, n_train, train_arm

from trimllm.data import load_side
from trimllm.modeling import load_model

ARMS = ("full", "default", "default-bridge", "default-bridge-kd", "oneshot-matched", "full-matched",
        "default-fullft", "default-teacherkl", "default-4x", "oneshot-4x", "full-4x", "oneshot-corpus",
        "oneshot-corpus-steps")
FROM_FULL = {"default", "default-bridge", "default-bridge-kd", "default-fullft", "default-teacherkl"}  # start from `full`
LONGER = 4  # the -4x arms: this many times the budget's training examples for the arm's last training
FULL_FT_LR = 5e-5  # the -fullft arm: every weight of the pruned model trains (pruned.method: full)
FULL_DEPTH = ("full", "full-4x")  # compared at every fraction (full-matched is trained per fraction, for its compute)
DEFAULT = ["schedule=oneshot", "lora.r=64", "lora.alpha=128", "train.lr=6e-4"]  # = tuned_oneshot's pruned stage
KD_POSITIONS = 16  # distill.tokens of the -kd arm: the answer + this many other positions per row
CORPUS_N = 1000  # oneshot-corpus: this many records' support passages (distill.corpus), as many as the examples
COMPARISONS = (("default", "full"), ("default", "full-matched"), ("default-bridge", "default"),
               ("default-fullft", "default"), ("default-teacherkl", "default"), ("default-bridge-kd", "default-bridge"),
               ("default-bridge-kd", "default"), ("default", "oneshot-matched"), ("default-bridge-kd", "full-matched"),
               ("oneshot-matched", "full-matched"), ("oneshot-matched", "full"), ("default-4x", "default"),
               ("oneshot-4x", "oneshot-matched"), ("full-4x", "full"), ("default-4x", "full-4x"), ("oneshot-4x", "full-4x"),
               ("oneshot-4x", "default-4x"), ("oneshot-4x", "full"), ("default-bridge-4x", "default-4x"),
               ("oneshot-corpus", "oneshot-matched"), ("oneshot-corpus", "full-matched"),
               ("oneshot-corpus-steps", "oneshot-matched"), ("oneshot-4x", "oneshot-corpus-steps"))


def overrides(arm: str, fraction: float, steps: int, full: Path | None, cache: Path, examples: int) -> list[str]:
    """The recipe overrides of one arm (``steps``: the pruned model's, or the matched arms' own; ``examples``: the
    training examples of the arm's last training)."""
    if arm.endswith("-4x"):
        return [*overrides(one_epoch(arm), fraction, steps, full, cache, examples), f"data.n_train={examples}"]
    cut = [f"stop.target_fraction={fraction}", f"train.steps_per_stage={steps}"]
    if arm in ("full", "full-matched"):
        return ["schedule=none", f"train.steps_per_stage={steps}"]
    if arm == "oneshot-matched":
        return [*DEFAULT, *cut]
    if arm.startswith("oneshot-corpus"):
        return [*DEFAULT, *cut, "distill={}", f"distill.teacher={full}", "distill.alpha=0.5", "distill.tokens=all",
                "distill.cache_k=64", f"distill.cache_dir={cache}", "distill.corpus=support", f"distill.corpus_n={CORPUS_N}"]
    arm_levers = {"default": [], "default-bridge": ["bridge={}"],
                  "default-bridge-kd": ["bridge={}", "distill={}", f"distill.teacher={full}",
                                        "distill.alpha=0.5", f"distill.tokens={KD_POSITIONS}", "distill.cache_k=64",
                                        f"distill.cache_dir={cache}"],
                 "default-fullft": ["lora.method=full", f"train.lr={FULL_FT_LR}"],
                 "default-teacherkl": ["scoring.scorer=teacher_kl"]}
    return [f"model.name={full}", *DEFAULT, *cut, *arm_levers[arm]]


def one_epoch(arm: str) -> str:
    """The budget's arm a longer-budget arm repeats on more examples (``oneshot-4x``: ``oneshot-matched``'s recipe)."""
    return "oneshot-matched" if arm == "oneshot-4x" else arm.removesuffix("-4x")


def accumulate(args) -> list[str]:
    """The batch in ``--grad-accum`` micro-batches: the same optimizer steps, a fraction of the memory (23 GB)."""
    return [f"train.batch_size={args.batch_size // args.grad_accum}", f"train.grad_accum={args.grad_accum}"]


def head_params(model_config) -> int:
    """The LM head's parameters (the embedding's, when tied)."""
    return model_config.vocab_size * model_config.hidden_size


def block_params(params: int, model_config) -> int:
    """The parameters a token's forward multiplies through, less the embedding and LM head."""
    return params - head_params(model_config) * (1 if model_config.tie_word_embeddings else 2)


def run_flops(plan: dict, model_config, full_fine_tune: bool = False) -> float:
    """Training FLOPs of a run: per stage, 4 (LoRA) or 6 (full) x block parameters x padded tokens."""
    factor = 6 if full_fine_tune else 4
    return sum(factor * block_params(s["params"], model_config) * s["tokens"]["padded"] for s in plan["stages"])


def teacher_flops(task: str, examples: int, args, model_config, full_params: int, arm: str) -> float:
    """The -kd and corpus arms' teacher-logit cache build: one forward of the full-depth model (LM head included)
    over every position of the training data (and of the corpus), and the -kd arm's student LM head at the KL's
    extra positions (x 4: forward and backward; the corpus arms' every position: :func:`head_flops`)."""
    vh = head_params(model_config)
    if arm.startswith("oneshot-corpus"):  # the cache covers the examples and the corpus; the KL's LM head: head_flops
        tokens = args.tokens_per_example[task] * examples + args.corpus_tokens[task] * args.corpus_size[task]
        return 2 * (block_params(full_params, model_config) + vh) * tokens
    if one_epoch(arm) != "default-bridge-kd":
        return 0.0
    tokens = args.tokens_per_example[task] * examples
    extra = 4 * vh * KD_POSITIONS * examples
    return 2 * (block_params(full_params, model_config) + vh) * tokens + extra


def head_flops(arm: str, plan: dict, model_config) -> float:
    """The student's LM head at every position (``distill.tokens: all``: oneshot-corpus), forward and backward."""
    return 4 * head_params(model_config) * sum(s["tokens"]["padded"] for s in plan["stages"]) if arm.startswith("oneshot-corpus") else 0.0


def matched_steps(default: dict, params: int, model_config, spent: float = 0.0, head: bool = False) -> int:
    """Steps of a LoRA run of a model of ``params`` parameters that cost the ``default`` record's compute (at its
    padded tokens per step), less ``spent`` FLOPs (a teacher cache's build); ``head``: the LM head runs at every
    position of a step (the KL of ``distill.tokens: all``)."""
    per_step = 4 * (block_params(params, model_config) + (head_params(model_config) if head else 0)) * default["tokens_per_step"]
    return max(1, round((default["compute_pflops"] * 1e15 - spent) / per_step))


def run_cell(task: str, seed: int, fraction: float, args, records: list[dict], save, config, layers: int) -> None:
    """Every arm of one task x seed x fraction, in order (the matched arms need the default's compute)."""
    steps = budget_steps(task, args)
    cache = args.work / f"{task}-teacher-logits-{seed}"
    full_out, full_plan = train_arm("full", 0.0, task, seed, args, args.work, layers, None,
                                    [*overrides("full", 0.0, steps, None, cache, 0), *accumulate(args)])
    full_params = full_plan["stages"][0]["params"]
    for arm in args.arms.split(","):
        key = (task, arm, 0.0 if arm in FULL_DEPTH else fraction, seed)
        if any(record_key(r) == key for r in records):
            continue
        arm_steps, examples = steps, n_train(task, args)
        if arm.endswith("-4x"):
            examples = min(LONGER * examples, len(load_side(task, "train")) - args.n_validation)
            arm_steps = math.ceil(examples / args.batch_size)
        if arm.endswith("-matched") or arm == "oneshot-corpus":
            default = next((r for r in records if record_key(r) == (task, "default", fraction, seed)), None)
            if default is None:
                raise SystemExit(f"{arm} needs the default arm's compute: run 'default' first (--arms)")
            arm_steps = matched_steps(default, full_params if arm == "full-matched" else default["params"], config,
                                      teacher_flops(task, examples, args, config, full_params, arm), arm == "oneshot-corpus")
        if arm == "oneshot-corpus-steps":  # oneshot-matched's steps: what the passages do per step, at more compute
            arm_steps = next(r["steps"] for r in records if record_key(r) == (task, "oneshot-matched", fraction, seed))
        out, plan = train_arm(arm, key[2], task, seed, args, args.work, layers, None,
                              [*overrides(arm, fraction, arm_steps, full_out / "final", cache, examples),
                               *accumulate(args)])
        flops = run_flops(plan, config, one_epoch(arm) == "default-fullft") + (
            run_flops(full_plan, config) if one_epoch(arm) in FROM_FULL else 0.0)
        flops += teacher_flops(task, examples, args, config, full_params, arm) + head_flops(arm, plan, config)
        last = plan["stages"][-1]
        record = evaluate_arm(arm, key[2], task, seed, out, plan, 0.0, args)
        record.update(compute_pflops=round(flops / 1e15, 4), steps=last["steps"],
                      tokens_per_step=round(last["tokens"]["padded"] / last["steps"], 1))
        records.append(record)
        save()


def main() -> None:
    options = parser(__doc__, "study_v3.json", "Study v3: recovery on a compute axis (CPU)")
    options.add_argument("--tasks", default="sciq,financial_phrasebank")
    options.add_argument("--seeds", default="0")
    options.add_argument("--fractions", default="0.5,0.25")
    options.add_argument("--arms", default=",".join(ARMS))
    options.add_argument("--batch-size", type=int, default=16)
    options.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step of --batch-size")
    options.add_argument("--eval-batch-size", type=int, default=16)
    options.add_argument("--n-validation", type=int, default=100)
    options.add_argument("--general-limit", type=int, default=100)
    options.add_argument("--n-train-cap", type=int, default=None, help="fewer training examples (a quick try)")
    options.add_argument("--test-limit", type=int, default=None, help="fewer test documents (a quick try)")
    options.add_argument("--work", type=Path, default=ROOT / "runs" / "study_v3")
    args = options.parse_args()
    if args.render_only:  # the pairs anew: a comparison added since the records ran shows without a rerun
        figures = json.loads(args.out.read_text())
        figures["comparisons"] = comparisons(figures["records"], pairs_of_arms=COMPARISONS, full_depth=FULL_DEPTH)
        publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures, args.out))
        return
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    records, minutes, started = previous.get("records", []), previous.get("setup", {}).get("minutes", 0.0), time.time()
    old = previous.get("setup", {})
    args.commands = old.get("commands", [old["command"]] if "command" in old else [])  # the runs resumed so far
    model, tokenizer = load_model(args.model)
    config, layers, env = model.config, model.config.num_hidden_layers, training_environment(model)
    args.tokens_per_example = {task: mean_tokens(task, tokenizer, n_train(task, args)) for task in args.tasks.split(",")}
    args.corpus_size, args.corpus_tokens = corpus_tokens(args, tokenizer, CORPUS_N)
    del model

    def save():
        figures = {"records": records, "comparisons": comparisons(records, pairs_of_arms=COMPARISONS,
                                                                  full_depth=FULL_DEPTH),
                   "setup": setup(args, env, minutes + (time.time() - started) / 60)}
        write_json(args.out, figures)
        return figures

    for seed in (int(s) for s in args.seeds.split(",")):
        for task in args.tasks.split(","):
            for fraction in (float(f) for f in args.fractions.split(",")):
                run_cell(task, seed, fraction, args, records, save, config, layers)
    figures = save()
    publish(figures, args.out, ROOT / "BENCHMARKS.md", args.section, markdown(figures, args.out))


def setup(args, env: dict, minutes: float) -> dict:
    """The run's settings; ``commands``: every invocation whose records the JSON holds (each runs the arms,
    tasks and fractions it names; the budget's settings are the same in all)."""
    skip = ("out", "render_only", "section", "work", "tokens_per_example", "commands", "corpus_size", "corpus_tokens")
    command = command_line("study_v3.py", args, skip=skip)
    return {**{k: v for k, v in vars(args).items() if k not in skip}, **env, "n_train": N_TRAIN,
            "minutes": round(minutes, 1), "command": command,
            "commands": list(dict.fromkeys([*args.commands, command])), "figures": shown_path(args.out, ROOT)}


TARGETS = {("sciq", 0.5): -0.05, ("financial_phrasebank", 0.5): -0.01, ("sciq", 0.25): -0.01,
           ("financial_phrasebank", 0.25): 0.0}  # issue 31: the best arm's accuracy minus full depth's, at least


def mean_acc(records: list[dict], task: str, arm: str, fraction: float, seeds=None) -> tuple[float, list[int]] | None:
    """The arm's test accuracy averaged over the seeds it ran (``seeds``: only these), and those seeds."""
    rows = [r for r in records if (r["task"], r["arm"]) == (task, arm) and (seeds is None or r["seed"] in seeds)
            and r["removed_fraction"] == (0.0 if arm in FULL_DEPTH else fraction)]
    return (sum(r["acc"] for r in rows) / len(rows), sorted(r["seed"] for r in rows)) if rows else None


def best_arm(records: list[dict], task: str, fraction: float, longer: bool) -> tuple[str, float, list[int]] | None:
    """The pruned arm with the highest seed-averaged accuracy, among the budget's arms or the longer budget's."""
    arms = {r["arm"] for r in records if r["task"] == task and r["removed_fraction"] == fraction
            and not r["arm"].startswith("full") and r["arm"].endswith("-4x") == longer}
    scored = [(arm, *mean_acc(records, task, arm, fraction)) for arm in arms]
    return max(scored, key=lambda a: a[1]) if scored else None


def target_lines(records: list[dict]) -> list[str]:
    """Each target's status: the best pruned arm (seeds averaged) against ``full`` on the same seeds (the budget)
    and ``full-matched`` (its compute)."""
    lines = []
    for (task, fraction), margin in TARGETS.items():
        best = best_arm(records, task, fraction, longer=False)
        full = best and mean_acc(records, task, "full", fraction, best[2])
        if not best or full is None:
            lines.append(f"- {task} at {fraction:.0%} (target: >= full depth {margin * 100:+.0f} points): not run yet.")
            continue
        arm, acc, seeds = best
        matched = mean_acc(records, task, "full-matched", fraction, seeds)
        diff = acc - full[0]
        status = "met" if diff >= margin else f"NOT met by {(margin - diff) * 100:.1f} points"
        on = matched and mean_acc(records, task, arm, fraction, matched[1])[0]  # on the seeds both ran
        versus = (f"; against full depth at the same compute ({matched[0]:.3f}, seeds {', '.join(map(str, matched[1]))}):"
                  f" {on - matched[0]:+.3f}" if matched else "; full depth at the same compute not run yet")
        lines.append(f"- {task} at {fraction:.0%} (target: >= full depth {margin * 100:+.0f} points): best arm "
                     f"`{arm}` {acc:.3f} vs full depth {full[0]:.3f} ({diff * 100:+.1f}; "
                     f"{'seed' if len(seeds) == 1 else 'mean of seeds'} {', '.join(map(str, seeds))}): "
                     f"**{status}**{versus}.{longer_budget(records, task, fraction)}")
    return lines


def longer_budget(records: list[dict], task: str, fraction: float) -> str:
    """What the longer budget did: the best -4x arm against full depth at the budget and at the same examples."""
    best = best_arm(records, task, fraction, longer=True)
    full = best and mean_acc(records, task, "full", fraction, best[2])
    if not best or full is None:
        return ""
    arm, acc, seeds = best
    full_4x = mean_acc(records, task, "full-4x", fraction, seeds)
    versus = (f"full depth at {LONGER}x {full_4x[0]:.3f} ({(acc - full_4x[0]) * 100:+.1f})"
              if full_4x else f"full depth at {LONGER}x not run yet")
    return f" At {LONGER}x the examples: `{arm}` {acc:.3f} ({(acc - full[0]) * 100:+.1f} against full depth at the budget; {versus})."


def markdown(figures: dict, out: Path) -> str:
    s, records = figures["setup"], figures["records"]
    png, decision = out.with_suffix(".png"), out.with_name(f"{out.stem}_decision.md")  # decision: hand-written
    plot(records, png, ARMS, FULL_DEPTH)
    commands = "; ".join(f"`{c}`" for c in s.get("commands", [s["command"]]))
    lines = [f"Commands (each runs the tasks, fractions and arms it names; records resume one by one): {commands} "
             f"({environment_line(s)}, peft {s['peft']}, lm-eval {s['lm_eval']}; "
             f"{s['minutes']} min in all, resumed runs summed). Figures in `{s['figures']}`; the arms are described in "
             "`scripts/study_v3.py`.", "",
             f"**Status: {len(records)} runs so far ({', '.join(sorted({r['task'] for r in records}))}); the study "
             "runs for hours in the background and resumes record by record, so the targets below read what has run.**",
             "", f"Targets (issue 31, {s['model']}):", "", *target_lines(records), "",
             *([decision.read_text().strip(), ""] if decision.is_file() else []),
             f"![accuracy against training compute]({shown_path(png, ROOT)})", "",
             "Compute: training FLOPs by the 6ND rule (LoRA 4ND), every stage the arm needs, `full`'s training "
             "included for the arms that start from its model, the teacher-logit cache's build for the -kd and corpus arms. Domain "
             "accuracy on the whole test side (± stderr); general = mean of lm-eval's general group at "
             f"{s['general_limit']} documents per task. Train s: not from a quiet machine.", "",
             "| task | removed | arm | seed | blocks kept | steps | compute PFLOPs | domain acc | general acc | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = {arm: i for i, arm in enumerate(ARMS)}
    for r in sorted(records, key=lambda r: (r["task"], r["removed_fraction"], order.get(r["arm"], 99), r["seed"])):
        lines.append(f"| {r['task']} | {r['removed_fraction']:.0%} | {r['arm']} | {r['seed']} | {r['blocks_kept']} | "
                     f"{r['steps']} | {r['compute_pflops']:.3f} | {r['acc']:.3f} ± {r['acc_stderr']:.3f} | "
                     f"{r['general_acc']:.3f} | {r['train_seconds']:.0f} |")
    lines += ["", "Paired differences (a − b over the same test items, seeds pooled; 95 % paired-bootstrap interval, "
              "exact McNemar p):", "", "| task | removed | a | b | seeds | diff | 95 % CI | p |",
              "|---|---|---|---|---|---|---|---|"]
    for c in figures["comparisons"]:
        lines.append(f"| {c['task']} | {c['removed_fraction']:.0%} | {c['a']} | {c['b']} | {c['seeds']} | "
                     f"{c['diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['p']:.3g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
