"""Every error that means bad input rather than a bug in trimllm, in one place.

Each derives from :class:`UserError`, which the command line catches to print one message and exit with 2 (no
traceback), and from the builtin a Python caller would expect (``ValueError`` for a bad value, ``RuntimeError`` for a
failed tool, ``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working. The modules that
raise them re-export them (``from trimllm.config import RecipeError`` still works). This module imports nothing of
trimllm: the command line reaches it without loading torch or the Trainer.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a recipe, a data file, a model, an output folder, the tools installed): the message says what was
    received, what was expected and how to fix it."""


class RecipeError(UserError, ValueError):
    """A recipe with problems; ``problems`` lists every one."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        super().__init__(f"{source} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


class OutputError(UserError, ValueError):
    """An output folder that cannot be used (or replaced) as asked; the message says what is there."""


class UnsupportedArchitectureError(UserError, ValueError):
    """Raised for a model family that has no row in :data:`trimllm.architectures.ARCHITECTURES`."""


class ModelLoadError(UserError, RuntimeError):
    """A model spec that could not be resolved or loaded; the message says what was tried."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the weights of a stage stopped being finite numbers: nothing of the stage is exported."""


class ToolingMissing(UserError, RuntimeError):
    """llama.cpp's converter or the llama-cpp-python binding is not installed (``make setup`` installs both)."""


class ConversionError(UserError, RuntimeError):
    """llama.cpp's converter or quantizer failed on a model; the message carries its last output lines."""


class LlamaCppCrash(ToolingMissing):
    """The installed llama.cpp dies (a signal, not an error) running a GGUF's tensor types on this CPU."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A bundled data file is missing; the message names the path tried and the variable to set."""


class DataFormatError(UserError, ValueError):
    """A data file that cannot be read as records; the message names the file and line."""
