"""Evaluation: tasks (a `Task` base + one file per benchmark), a runner, and the `owl3 eval` command.

Names are imported lazily so that building the CLI parser does not import torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Item": "owl3.evaluation.task",
    "Task": "owl3.evaluation.task",
    "normalize": "owl3.evaluation.task",
    "Report": "owl3.evaluation.runner",
    "evaluate": "owl3.evaluation.runner",
}
TASKS = ("synthetic",)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'owl3.evaluation' has no attribute {name!r}")


__all__ = ["TASKS", *_EXPORTS]
