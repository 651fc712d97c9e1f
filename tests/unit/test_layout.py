"""The code's shape: plug-ins are their folders (file name = registry key), a plug-in refuses options it does not
take, and no module or function grows past what a reader takes in at once."""

from __future__ import annotations

import ast
import pkgutil

import pytest

from tests.conftest import ROOT
from trimllm.freezing import FREEZING, FreezeContext
from trimllm.methods import METHODS
from trimllm.registry import Registry, UnknownOptionError
from trimllm.schedules import SCHEDULES
from trimllm.scoring import SCORERS

REGISTRIES = {"scoring": SCORERS, "schedules": SCHEDULES, "freezing": FREEZING, "methods": METHODS}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 60


@pytest.mark.parametrize("folder", sorted(REGISTRIES))
def test_every_plugin_file_registers_its_own_name(folder):
    registry = REGISTRIES[folder]
    modules = {info.name for info in pkgutil.iter_modules([str(ROOT / "trimllm" / folder)])}
    assert set(registry.names()) <= modules  # every key is a file of the folder
    for name in registry.names():
        assert registry.get(name).__module__ == f"trimllm.{folder}.{name}"


def test_registries_list_what_the_recipes_and_docs_name():
    assert SCORERS.names() == ["activation_norm", "angular", "block_influence", "calibration_loss", "depth", "random",
                               "task_accuracy", "taylor", "teacher_kl"]
    assert SCHEDULES.names() == ["none", "oneshot", "progressive", "trimllm", "tuned_oneshot"]
    assert FREEZING.names() == ["bottom", "contribution", "none", "progtuning", "static"]
    assert METHODS.names() == ["full", "lora", "qlora"]


def test_a_plugin_refuses_an_option_it_does_not_take():
    with pytest.raises(UnknownOptionError, match=r"scorer 'block_influence' does not take option 'max_lenght'\. "
                                                 r"Did you mean 'max_length'\? It takes: batch_size, max_length"):
        SCORERS.check_options("block_influence", ["max_lenght"])
    with pytest.raises(UnknownOptionError, match="schedule 'oneshot' does not take option 'per_stage'"):
        SCHEDULES.check_options("oneshot", ["per_stage"])
    SCHEDULES.check_options("progressive", ["per_stage"])  # taken: no error


def test_run_scorer_refuses_a_misspelled_option_and_passes_settings_only_where_taken():
    from tests.conftest import build_tiny, tiny_tokenizer
    from trimllm.scoring import CalibrationSet, run_scorer

    model, tokenizer = build_tiny("llama"), tiny_tokenizer()
    calibration = CalibrationSet.from_dataset("sciq", 2)
    with pytest.raises(UnknownOptionError, match="proxy_kk"):
        run_scorer("task_accuracy", model, tokenizer, calibration, proxy_kk=2)
    # batch_size / max_length / seed are run-wide settings: depth takes none of them and is still run
    assert run_scorer("depth", model, tokenizer, calibration, batch_size=4, max_length=64, seed=1).scores


def test_registering_by_file_name():
    registry = Registry("thing")

    @registry.register()
    def plugin(ctx):
        return ctx

    assert registry.names() == ["test_layout"]  # the defining module's file name


def test_freezing_mode_context_is_what_the_modes_read():
    from trimllm.plan import Plan

    plan = Plan(base_model="x", model_type="llama", num_layers=6, params_original=1, kept=[0, 1, 2, 4, 5], dropped=[3])
    context = FreezeContext(stage=1, plan=plan, count=2, fraction=0.5, score=None)
    assert FREEZING.get("progtuning")(context) == [0, 1]  # round(0.5 * 5 * 2 / 3) = 2, bottom-up
    assert FREEZING.get("static")(context) == []  # chosen at stage 0 only
    assert FREEZING.get("bottom")(context) == [0, 1]  # the lowest `count` kept blocks


def _python_files():
    return [*sorted((ROOT / "trimllm").rglob("*.py")), *sorted((ROOT / "scripts").glob("*.py")),
            ROOT / "eval" / "tasks" / "trimllm_tasks.py"]


def test_no_module_or_function_is_too_long():
    too_long = []
    for path in _python_files():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}::{node.name}: {lines} lines")
    assert too_long == []


def _trimllm_imports(path) -> set[str]:
    """The trimllm modules a file imports, wherever the import stands (in a function, under TYPE_CHECKING):
    ``from trimllm.cli import models`` names the module ``trimllm.cli.models`` where it is one."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "trimllm").rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= subs or {node.module}
            if len(subs) < len(node.names):
                found.add(node.module)
    return found


def test_the_package_has_no_import_cycle():
    """No module imports, directly or through others, a module that imports it back: the package reads from the
    command line down to the architecture table (a cycle is also what makes a partially imported module fail)."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "trimllm").rglob("*.py")}
    graph = {name: _trimllm_imports(path) - {name} for name, path in files.items()}
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    assert "trimllm.cli.common" in graph["trimllm.cli.models"]  # the walk sees the package's own imports
