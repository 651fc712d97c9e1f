"""A user's templates (``data.doc_to_text`` / ``doc_to_choice`` / ``doc_to_target``), checked before lm-eval renders
them: lm-eval renders with a plain Jinja environment, in which ``{{ lipsum.__globals__["os"].popen(...) }}`` runs a
shell command (in ``trimllm validate``, ``train``, and in every later ``lm_eval --include_path`` on the task YAML
trimllm writes). So no template reaches lm-eval before two checks pass:

1. :func:`check_template` (static, every time a user task is built or written): the template parses, and reads
   no attribute or key that starts with ``_``, names no dunder in a string, and calls no ``format`` /
   ``format_map`` (the ways out of a template's data into Python's internals).
2. :func:`record_problem` (every record a run uses, in validation): the template renders in Jinja's
   ``ImmutableSandboxedEnvironment`` (which refuses what the static check may miss), and every record field it
   reads is present and not null — a missing JSONL field or an empty CSV cell would otherwise render as the text
   "None" and train silently.

``data.process_docs`` is different by design: it names the user's own Python function, which runs as Python.
"""

from __future__ import annotations

from functools import cache

from trimllm.data import DataFormatError

TEMPLATE_KEYS = ("doc_to_text", "doc_to_choice", "doc_to_target")
UNSAFE_METHODS = {"format", "format_map", "mro"}


@cache
def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


def templates(cfg) -> dict[str, str]:
    """The recipe's template strings (``doc_to_choice`` may be a list of literal choices, ``doc_to_target`` an
    index: those are no templates)."""
    return {key: value for key in TEMPLATE_KEYS if isinstance(value := getattr(cfg, key, None), str)}


def unsafe_parts(template: str) -> list[str]:
    """What in ``template`` reaches beyond a record's data (empty for a safe template)."""
    from jinja2 import nodes

    tree = _environment().parse(template)
    found = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Const)):
        if isinstance(node, nodes.Getattr) and (node.attr.startswith("_") or node.attr in UNSAFE_METHODS):
            found.append(f".{node.attr}")
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and \
                isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            found.append(f"[{node.arg.value!r}]")
        elif isinstance(node, nodes.Const) and isinstance(node.value, str) and "__" in node.value:
            found.append(repr(node.value))
    return found


def check_template(key: str, template: str) -> None:
    """Raise :class:`DataFormatError` unless ``template`` parses and is safe (see the module docstring)."""
    from jinja2 import TemplateSyntaxError

    try:
        parts = unsafe_parts(template)
    except TemplateSyntaxError as err:
        raise DataFormatError(f"data.{key} is not a valid Jinja template (line {err.lineno}: {err.message}): "
                              f"{template!r}") from None
    if parts:
        raise DataFormatError(f"data.{key} reaches beyond the record's fields ({', '.join(dict.fromkeys(parts))}): "
                              f"{template!r}. A template may read the record's fields (e.g. \"{{{{question}}}}\") and "
                              "use Jinja filters; attributes starting with '_' and format() are refused, because "
                              "they run code. Put data preparation in data.process_docs (your own Python file).")


def check_templates(cfg) -> None:
    """:func:`check_template` on every template of ``cfg`` (a :class:`trimllm.config.DataConfig`)."""
    for key, template in templates(cfg).items():
        check_template(key, template)


@cache
def _compiled(template: str):
    """The sandbox's compiled template (compiled once: validation renders it on every record of every side)."""
    return _environment().from_string(template)


@cache
def _fields(template: str) -> frozenset[str]:
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_environment().parse(template)))


def record_problem(cfg, record: dict, side: str, index: int) -> str | None:
    """Why ``record`` cannot be used with ``cfg``'s templates (a field they read is missing or null, or the
    sandbox refuses the rendering), or None. Rendering here never runs code: it is the immutable sandbox."""
    from jinja2.exceptions import SecurityError, UndefinedError

    for key, template in templates(cfg).items():
        missing = sorted(f for f in _fields(template) if record.get(f) is None and f not in _environment().globals)
        if missing:
            what = "missing" if any(f not in record for f in missing) else "null (or an empty CSV cell)"
            fields = ", ".join(k for k in record if k != "_uid")
            return (f"data.{key}: {side} record {index} has no value for field {', '.join(map(repr, missing))} "
                    f"({what}); it would render as the text 'None'. Fill it in, or drop the record (its fields: "
                    f"{fields}; the record: {_shown(record)})")
        try:
            _compiled(template).render(**record)
        except SecurityError as err:
            return f"data.{key} was refused by Jinja's sandbox on {side} record {index}: {err}"
        except UndefinedError as err:
            return f"data.{key}: {side} record {index}: {err.message}"
        except Exception:  # noqa: BLE001 (lm-eval's own rendering below reports other failures with the record)
            continue
    return None


def _shown(record: dict) -> str:
    import json

    return json.dumps({k: v for k, v in record.items() if k != "_uid"}, ensure_ascii=False, default=str)[:200]
