import sys, time, torch
from profile_step import trainer_and_batches
model, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
tr, batches = trainer_and_batches(model, data, threads)
for i in range(2): tr.train_step([batches[i]], i)
t = time.perf_counter()
for i in range(2, 6): tr.train_step([batches[i]], i)
print("step", (time.perf_counter() - t) / 4)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    for i in range(6, 9): tr.train_step([batches[i]], i)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
