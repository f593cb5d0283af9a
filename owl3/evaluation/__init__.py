"""Evaluation: tasks (a `Task` base + one file per benchmark), a runner, and the `owl3 eval` command.

Benchmarks: mmbench.py, distractor.py, nlvr2.py, videomme.py, mvbench.py, longvideobench.py (data.py and
videos.py read their files); benchmark.py runs one through a backend (backends.py: local batches or an
OpenAI-compatible server), answers.py reads the answers, records.py keeps results files (resume, shards,
merge) and computes scores; runner.py runs the synthetic task; stats.py, plot.py.

Names are imported lazily so that building the CLI parser does not import torch.
"""

from owl3.lazy import lazy_exports

_EXPORTS = {
    "Item": "owl3.evaluation.task",
    "Task": "owl3.evaluation.task",
    "normalize": "owl3.evaluation.task",
    "Report": "owl3.evaluation.runner",
    "evaluate": "owl3.evaluation.runner",
    "Benchmark": "owl3.evaluation.benchmark",
    "run_benchmark": "owl3.evaluation.benchmark",
    "LocalBackend": "owl3.evaluation.backends",
    "ServerBackend": "owl3.evaluation.backends",
    "extract_choice": "owl3.evaluation.answers",
    "extract_yes_no": "owl3.evaluation.answers",
    "score_records": "owl3.evaluation.records",
    "MMBenchTask": "owl3.evaluation.mmbench",
    "DistractorTask": "owl3.evaluation.distractor",
    "NLVR2Task": "owl3.evaluation.nlvr2",
    "VideoMMETask": "owl3.evaluation.videomme",
    "MVBenchTask": "owl3.evaluation.mvbench",
    "LongVideoBenchTask": "owl3.evaluation.longvideobench",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
