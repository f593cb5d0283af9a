"""Evaluation: tasks (a `Task` base + one file per benchmark), a runner, and the `owl3 eval` command.

Names are imported lazily so that building the CLI parser does not import torch.
"""

from owl3.lazy import lazy_exports

_EXPORTS = {
    "Item": "owl3.evaluation.task",
    "Task": "owl3.evaluation.task",
    "normalize": "owl3.evaluation.task",
    "Report": "owl3.evaluation.runner",
    "evaluate": "owl3.evaluation.runner",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
