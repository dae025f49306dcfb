"""Errors the core raises for bad input: one clear line naming the file and the problem."""

from __future__ import annotations


class EffstudioError(Exception):
    """Base of the errors shown to users as one line (no traceback unless --debug)."""


class ModelLoadError(EffstudioError):
    """A model file could not be opened. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class UntrustedPickleError(ModelLoadError):
    """The file is a pickle (``torch.save(model)``); loading it would run code from it."""


class InputShapeError(EffstudioError):
    """An input's shape is dynamic and was not given with ``--input NAME=DIMS``."""
