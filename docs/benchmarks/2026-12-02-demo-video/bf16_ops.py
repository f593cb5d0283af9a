"""Where a demo training step spends its time, float32 against bf16 autocast: the torch profiler over 4 steps
(after 2 warm-up steps) of the twelfth session's profile_step.py setup, the 6 ops with the most self CPU time.

    python bf16_ops.py MODEL /tmp/prof/bind/binding.jsonl"""
import importlib.util
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

_path = Path(__file__).parents[1] / "2026-11-28-demo-cells" / "profile_step.py"
_spec = importlib.util.spec_from_file_location("profile_step", _path)
profile_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile_step)

model, data = sys.argv[1], sys.argv[2]
for bf16 in (False, True):
    tr, batches = profile_step.trainer_and_batches(model, data, threads=1, bf16=bf16, n=6)
    for i in range(2):
        tr.train_step([batches[i]], i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(2, 6):
            tr.train_step([batches[i]], i)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"{'bf16 autocast' if bf16 else 'float32'}: {total / 4e6:.3f} s of self CPU time a step (profiled)")
    for e in ops[:6]:
        print(f"  {e.key[:60]:60} {e.self_cpu_time_total / 4e3:8.1f} ms a step  {e.count // 4:5d} calls")
